"""The travel tools' specs: a copy of environments/travel/schema/tools.json (a component cannot
read files). The differential test fails if the two drift apart."""

SPECS = r'''[
 {
  "name": "list_states",
  "description": "List the states in this world and the ids of their cities.",
  "parameters": {
   "type": "object",
   "additionalProperties": false,
   "properties": {},
   "required": []
  },
  "result": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "states": {
     "type": "array",
     "items": {
      "type": "object",
      "additionalProperties": false,
      "properties": {
       "name": {
        "type": "string"
       },
       "cities": {
        "type": "array",
        "items": {
         "type": "string"
        }
       }
      },
      "required": [
       "name",
       "cities"
      ]
     }
    }
   },
   "required": [
    "states"
   ]
  }
 },
 {
  "name": "list_cities",
  "description": "List the cities of one state (id, name, state).",
  "parameters": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "state": {
     "type": "string",
     "maxLength": 64
    }
   },
   "required": [
    "state"
   ]
  },
  "result": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "cities": {
     "type": "array",
     "items": {
      "type": "object",
      "additionalProperties": false,
      "properties": {
       "id": {
        "type": "string"
       },
       "name": {
        "type": "string"
       },
       "state": {
        "type": "string"
       }
      },
      "required": [
       "id",
       "name",
       "state"
      ]
     }
    }
   },
   "required": [
    "cities"
   ]
  }
 },
 {
  "name": "get_city",
  "description": "Look up one city by id.",
  "parameters": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "city": {
     "type": "string",
     "description": "city id, e.g. C03",
     "maxLength": 64
    }
   },
   "required": [
    "city"
   ]
  },
  "result": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "city": {
     "type": "object",
     "additionalProperties": false,
     "properties": {
      "id": {
       "type": "string"
      },
      "name": {
       "type": "string"
      },
      "state": {
       "type": "string"
      }
     },
     "required": [
      "id",
      "name",
      "state"
     ]
    }
   },
   "required": [
    "city"
   ]
  }
 },
 {
  "name": "search_flights",
  "description": "Flights from one city to another on a date. Prices are per person.",
  "parameters": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "origin": {
     "type": "string",
     "description": "city id, e.g. C03",
     "maxLength": 64
    },
    "destination": {
     "type": "string",
     "description": "city id, e.g. C03",
     "maxLength": 64
    },
    "date": {
     "type": "string",
     "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
     "description": "YYYY-MM-DD"
    }
   },
   "required": [
    "origin",
    "destination",
    "date"
   ]
  },
  "result": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "flights": {
     "type": "array",
     "items": {
      "type": "object",
      "required": [
       "id",
       "mode",
       "from",
       "to",
       "date",
       "service",
       "departure",
       "duration_min",
       "distance_km",
       "price",
       "price_basis"
      ],
      "properties": {
       "id": {
        "type": "string"
       },
       "mode": {
        "enum": [
         "flight",
         "self_driving",
         "taxi",
         "train",
         "bus"
        ]
       },
       "from": {
        "type": "string"
       },
       "to": {
        "type": "string"
       },
       "date": {
        "type": [
         "string",
         "null"
        ]
       },
       "service": {
        "type": [
         "string",
         "null"
        ]
       },
       "departure": {
        "type": [
         "string",
         "null"
        ]
       },
       "duration_min": {
        "type": "integer"
       },
       "distance_km": {
        "type": "integer"
       },
       "price": {
        "type": "integer"
       },
       "price_basis": {
        "enum": [
         "per_person",
         "per_vehicle"
        ]
       },
       "vehicle_capacity": {
        "type": [
         "integer",
         "null"
        ]
       }
      }
     }
    }
   },
   "required": [
    "flights"
   ]
  }
 },
 {
  "name": "search_ground_transport",
  "description": "Self-driving and taxi routes (any day; priced per vehicle: a car seats 5, a taxi 4) and train and bus services on a date (priced per person) between two cities.",
  "parameters": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "origin": {
     "type": "string",
     "description": "city id, e.g. C03",
     "maxLength": 64
    },
    "destination": {
     "type": "string",
     "description": "city id, e.g. C03",
     "maxLength": 64
    },
    "date": {
     "type": "string",
     "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
     "description": "YYYY-MM-DD"
    }
   },
   "required": [
    "origin",
    "destination",
    "date"
   ]
  },
  "result": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "routes": {
     "type": "array",
     "items": {
      "type": "object",
      "required": [
       "id",
       "mode",
       "from",
       "to",
       "date",
       "service",
       "departure",
       "duration_min",
       "distance_km",
       "price",
       "price_basis"
      ],
      "properties": {
       "id": {
        "type": "string"
       },
       "mode": {
        "enum": [
         "flight",
         "self_driving",
         "taxi",
         "train",
         "bus"
        ]
       },
       "from": {
        "type": "string"
       },
       "to": {
        "type": "string"
       },
       "date": {
        "type": [
         "string",
         "null"
        ]
       },
       "service": {
        "type": [
         "string",
         "null"
        ]
       },
       "departure": {
        "type": [
         "string",
         "null"
        ]
       },
       "duration_min": {
        "type": "integer"
       },
       "distance_km": {
        "type": "integer"
       },
       "price": {
        "type": "integer"
       },
       "price_basis": {
        "enum": [
         "per_person",
         "per_vehicle"
        ]
       },
       "vehicle_capacity": {
        "type": [
         "integer",
         "null"
        ]
       }
      }
     }
    }
   },
   "required": [
    "routes"
   ]
  }
 },
 {
  "name": "get_distance",
  "description": "Road distance and driving time between two cities.",
  "parameters": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "origin": {
     "type": "string",
     "description": "city id, e.g. C03",
     "maxLength": 64
    },
    "destination": {
     "type": "string",
     "description": "city id, e.g. C03",
     "maxLength": 64
    }
   },
   "required": [
    "origin",
    "destination"
   ]
  },
  "result": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "distance_km": {
     "type": "integer"
    },
    "duration_min": {
     "type": "integer"
    }
   },
   "required": [
    "distance_km",
    "duration_min"
   ]
  }
 },
 {
  "name": "search_accommodations",
  "description": "Accommodations in a city, cheapest first, optionally filtered. Prices are per room per night; a room holds at most max_occupancy guests; forbids lists house rules (e.g. parties, pets).",
  "parameters": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "city": {
     "type": "string",
     "description": "city id, e.g. C03",
     "maxLength": 64
    },
    "room_type": {
     "enum": [
      "entire home",
      "private room",
      "shared room"
     ]
    },
    "max_price": {
     "type": "integer",
     "minimum": 0
    },
    "min_rating": {
     "type": "number",
     "minimum": 0,
     "maximum": 5
    },
    "allows": {
     "type": "string",
     "maxLength": 64,
     "description": "only listings that do not forbid this"
    }
   },
   "required": [
    "city"
   ]
  },
  "result": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "accommodations": {
     "type": "array",
     "items": {
      "type": "object",
      "required": [
       "id",
       "name",
       "city",
       "room_type",
       "nightly_price",
       "max_occupancy",
       "min_nights",
       "forbids",
       "rating"
      ],
      "properties": {
       "id": {
        "type": "string"
       },
       "name": {
        "type": "string"
       },
       "city": {
        "type": "string"
       },
       "room_type": {
        "type": "string"
       },
       "nightly_price": {
        "type": "integer"
       },
       "max_occupancy": {
        "type": "integer"
       },
       "min_nights": {
        "type": "integer"
       },
       "forbids": {
        "type": "array",
        "items": {
         "type": "string"
        }
       },
       "rating": {
        "type": "number"
       }
      }
     }
    }
   },
   "required": [
    "accommodations"
   ]
  }
 },
 {
  "name": "search_restaurants",
  "description": "Restaurants in a city, cheapest first, optionally filtered. average_cost is per person per meal.",
  "parameters": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "city": {
     "type": "string",
     "description": "city id, e.g. C03",
     "maxLength": 64
    },
    "cuisine": {
     "type": "string",
     "maxLength": 64
    },
    "max_cost": {
     "type": "integer",
     "minimum": 0
    },
    "min_rating": {
     "type": "number",
     "minimum": 0,
     "maximum": 5
    }
   },
   "required": [
    "city"
   ]
  },
  "result": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "restaurants": {
     "type": "array",
     "items": {
      "type": "object",
      "required": [
       "id",
       "name",
       "city",
       "cuisines",
       "average_cost",
       "rating"
      ],
      "properties": {
       "id": {
        "type": "string"
       },
       "name": {
        "type": "string"
       },
       "city": {
        "type": "string"
       },
       "cuisines": {
        "type": "array",
        "items": {
         "type": "string"
        }
       },
       "average_cost": {
        "type": "integer"
       },
       "rating": {
        "type": "number"
       }
      }
     }
    }
   },
   "required": [
    "restaurants"
   ]
  }
 },
 {
  "name": "search_attractions",
  "description": "Attractions in a city, cheapest first, optionally filtered. ticket_price is per person.",
  "parameters": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "city": {
     "type": "string",
     "description": "city id, e.g. C03",
     "maxLength": 64
    },
    "category": {
     "type": "string",
     "maxLength": 64
    },
    "max_price": {
     "type": "integer",
     "minimum": 0
    }
   },
   "required": [
    "city"
   ]
  },
  "result": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "attractions": {
     "type": "array",
     "items": {
      "type": "object",
      "required": [
       "id",
       "name",
       "city",
       "category",
       "ticket_price",
       "rating"
      ],
      "properties": {
       "id": {
        "type": "string"
       },
       "name": {
        "type": "string"
       },
       "city": {
        "type": "string"
       },
       "category": {
        "type": "string"
       },
       "ticket_price": {
        "type": "integer"
       },
       "rating": {
        "type": "number"
       }
      }
     }
    }
   },
   "required": [
    "attractions"
   ]
  }
 },
 {
  "name": "get_details",
  "description": "Full record of any accommodation (H...), restaurant (R...), attraction (A...), route (T...) or city (C...) by id.",
  "parameters": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "id": {
     "type": "string",
     "maxLength": 64
    }
   },
   "required": [
    "id"
   ]
  },
  "result": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "kind": {
     "enum": [
      "accommodation",
      "restaurant",
      "attraction",
      "route",
      "city"
     ]
    },
    "record": {
     "type": "object"
    }
   },
   "required": [
    "kind",
    "record"
   ]
  }
 },
 {
  "name": "estimate_cost",
  "description": "Cost of a draft plan for this trip's travellers, by category. Unknown ids are listed, not priced.",
  "parameters": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "plan": {
     "type": "object"
    }
   },
   "required": [
    "plan"
   ]
  },
  "result": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "transport": {
     "type": "integer"
    },
    "meals": {
     "type": "integer"
    },
    "attractions": {
     "type": "integer"
    },
    "accommodation": {
     "type": "integer"
    },
    "total": {
     "type": "integer"
    },
    "unknown_ids": {
     "type": "array",
     "items": {
      "type": "string"
     }
    }
   },
   "required": [
    "transport",
    "meals",
    "attractions",
    "accommodation",
    "total",
    "unknown_ids"
   ]
  }
 },
 {
  "name": "submit_plan",
  "description": "Submit the final plan. It is checked against the plan format only; the answer is graded after the episode.",
  "parameters": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "plan": {
     "type": "object"
    }
   },
   "required": [
    "plan"
   ]
  },
  "result": {
   "type": "object",
   "additionalProperties": false,
   "properties": {
    "accepted": {
     "type": "boolean"
    },
    "days": {
     "type": "integer"
    }
   },
   "required": [
    "accepted",
    "days"
   ]
  }
 }
]'''
