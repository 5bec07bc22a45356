"""The travel-planning tools, ported to Python as a plugin of the `toolset` world.

Results must equal the native tools' (environments/travel/src/tools.rs) value for value; errors
must carry the same code and name the same tool and argument. The free text after the argument
(a JSON-Schema or JSON-parser diagnosis) is advisory and may be worded differently.
Build it with `envsynth plugin build verifiers/travel/travel_toolset.py --world toolset`.
"""

import json
import re

import wit_world
from componentize_py_types import Err

from travel_common import CAPACITY, Malformed, Query, TaskError, World, meals_of, parse_plan, plan_cost
from travel_tool_specs import SPECS

TOOLS = json.loads(SPECS)
BY_NAME = {t["name"]: t for t in TOOLS}


# ---- argument validation: the subset of JSON Schema that tools.json uses ----

def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()


def type_ok(v, t):
    return {
        "object": lambda: isinstance(v, dict),
        "array": lambda: isinstance(v, list),
        "string": lambda: isinstance(v, str),
        "integer": lambda: is_int(v),
        "number": lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda: isinstance(v, bool),
        "null": lambda: v is None,
    }[t]()


def show(v):
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def schema_error(schema, v, path=""):
    """The first violation as (instance path, message), or None."""
    t = schema.get("type")
    if t is not None and not type_ok(v, t):
        return path, "%s is not of type %s" % (show(v), show(t))
    if "enum" in schema and v not in schema["enum"]:
        return path, "%s is not one of %s" % (show(v), show(schema["enum"]))
    if isinstance(v, str):
        if "maxLength" in schema and len(v) > schema["maxLength"]:
            return path, "%s is longer than %d characters" % (show(v), schema["maxLength"])
        if "pattern" in schema and not re.search(schema["pattern"].replace("$", r"\Z"), v):
            return path, "%s does not match %s" % (show(v), show(schema["pattern"]))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in schema and v < schema["minimum"]:
            return path, "%s is less than the minimum of %s" % (show(v), schema["minimum"])
        if "maximum" in schema and v > schema["maximum"]:
            return path, "%s is greater than the maximum of %s" % (show(v), schema["maximum"])
    if isinstance(v, dict):
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            extra = [k for k in v if k not in props]
            if extra:
                return path, "Additional properties are not allowed (%s unexpected)" % ", ".join(
                    "'%s'" % k for k in extra)
        for k in schema.get("required", []):
            if k not in v:
                return path, "%s is a required property" % show(k)
        for k, sub in props.items():
            if k in v:
                e = schema_error(sub, v[k], path + "/" + k)
                if e is not None:
                    return e
    return None


# ---- the tools (mirrors tools.rs) ----

class ToolError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def ascii_lower(s):
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


def as_u64(v):
    """serde_json's `as_u64`: only an integer literal in range."""
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 64 else None


def as_f64(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def opt_str(args, key):
    v = args.get(key)
    return v if isinstance(v, str) else None


def route_json(r):
    cap = CAPACITY.get(r["mode"])
    return {
        "id": r["id"], "mode": r["mode"], "from": r["from"], "to": r["to"], "date": r["date"],
        "service": r["service"], "departure": r["departure"], "duration_min": r["duration_min"],
        "distance_km": r["distance_km"], "price": r["price"],
        "price_basis": "per_vehicle" if cap else "per_person", "vehicle_capacity": cap,
    }


def days_in_month(y, m):
    if m == 2:
        return 29 if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def is_calendar_date(s):
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", s):
        return False
    y, m, d = int(s[0:4]), int(s[5:7]), int(s[8:10])
    return 1 <= m <= 12 and 1 <= d <= days_in_month(y, m)


def call_tool(w, people, name, args):
    tool = BY_NAME.get(name)
    if tool is None:
        raise ToolError("unknown_tool", "no tool named `%s`; tools are %s" % (name, ", ".join(t["name"] for t in TOOLS)))
    e = schema_error(tool["parameters"], args)
    if e is not None:
        raise ToolError("invalid_arguments", "%s: arguments%s: %s" % (name, e[0], e[1]))

    def city(key):
        ident = args.get(key, "")
        c = w.city(ident)
        if c is None:
            raise ToolError("not_found", "%s: no city with id `%s` (use list_cities)" % (name, ident))
        return c

    if name == "list_states":
        return {"states": w.states}
    if name == "list_cities":
        state = args["state"]
        if not any(s["name"] == state for s in w.states):
            raise ToolError("not_found", "list_cities: no state named `%s` (use list_states)" % state)
        return {"cities": [c for c in w.cities if c["state"] == state]}
    if name == "get_city":
        return {"city": city("city")}
    if name in ("search_flights", "search_ground_transport"):
        a, b = city("origin"), city("destination")
        date = args["date"]
        if not is_calendar_date(date):
            raise ToolError("invalid_arguments", "%s: arguments/date: `%s` is not a calendar date" % (name, date))
        flights = name == "search_flights"
        found = [route_json(r) for r in w.routes
                 if r["from"] == a["id"] and r["to"] == b["id"] and (r["mode"] == "flight") == flights
                 and (r["date"] is None or r["date"] == date)]
        return {"flights": found} if flights else {"routes": found}
    if name == "get_distance":
        a, b = city("origin"), city("destination")
        for r in w.routes:
            if r["from"] == a["id"] and r["to"] == b["id"]:
                return {"distance_km": r["distance_km"], "duration_min": r["duration_min"]}
        return {"distance_km": 0, "duration_min": 0}
    if name == "search_accommodations":
        c = city("city")
        room_type, allows = opt_str(args, "room_type"), opt_str(args, "allows")
        max_price, min_rating = as_u64(args.get("max_price")), as_f64(args.get("min_rating"))
        found = [h for h in w.accommodations if h["city"] == c["id"]
                 and (room_type is None or h["room_type"] == room_type)
                 and (max_price is None or h["nightly_price"] <= max_price)
                 and (min_rating is None or h["rating"] >= min_rating)
                 and (allows is None or allows not in h["forbids"])]
        found.sort(key=lambda h: (h["nightly_price"], h["id"]))
        return {"accommodations": found}
    if name == "search_restaurants":
        c = city("city")
        cuisine = opt_str(args, "cuisine")
        max_cost, min_rating = as_u64(args.get("max_cost")), as_f64(args.get("min_rating"))
        found = [r for r in w.restaurants if r["city"] == c["id"]
                 and (cuisine is None or any(ascii_lower(y) == ascii_lower(cuisine) for y in r["cuisines"]))
                 and (max_cost is None or r["average_cost"] <= max_cost)
                 and (min_rating is None or r["rating"] >= min_rating)]
        found.sort(key=lambda r: (r["average_cost"], r["id"]))
        return {"restaurants": found}
    if name == "search_attractions":
        c = city("city")
        category = opt_str(args, "category")
        max_price = as_u64(args.get("max_price"))
        found = [x for x in w.attractions if x["city"] == c["id"]
                 and (category is None or ascii_lower(x["category"]) == ascii_lower(category))
                 and (max_price is None or x["ticket_price"] <= max_price)]
        found.sort(key=lambda x: (x["ticket_price"], x["id"]))
        return {"attractions": found}
    if name == "get_details":
        ident = args["id"]
        kinds = {"H": ("accommodation", w.accommodation), "R": ("restaurant", w.restaurant),
                 "A": ("attraction", w.attraction), "T": ("route", w.route), "C": ("city", w.city)}
        kind, find = kinds.get(ident[:1], (None, None))
        record = find(ident) if find else None
        if record is None:
            raise ToolError("not_found", "get_details: no record with id `%s`" % ident)
        return {"kind": kind, "record": route_json(record) if kind == "route" else record}
    if name in ("estimate_cost", "submit_plan"):
        try:
            days = parse_plan(args["plan"])
        except Malformed as e:
            raise ToolError("invalid_arguments", "%s: arguments/plan: %s" % (name, e))
        if days is None:
            raise ToolError("invalid_arguments", "%s: arguments/plan: the plan is empty" % name)
        if name == "submit_plan":
            return {"accepted": True, "days": len(days)}
        c = plan_cost(w, people, days)
        unknown = []
        for d in days:
            refs = []
            if d["travel"] is not None:
                refs.append((d["travel"]["transport"], w.route))
            refs += [(m, w.restaurant) for m in meals_of(d)]
            refs += [(a, w.attraction) for a in d["attractions"]]
            if d["accommodation"] is not None:
                refs.append((d["accommodation"], w.accommodation))
            unknown += [ident for ident, find in refs if find(ident) is None]
        return dict(c, unknown_ids=unknown)
    raise ToolError("unknown_tool", "tool `%s` is declared but not implemented" % name)


def call(world_state, name, arguments):
    try:
        state = json.loads(world_state)
        w = World(state["world"])
        people = Query(state["constraints"]).people
    except (KeyError, TypeError, ValueError, TaskError) as e:
        raise Err("the world state cannot be read: %s" % e)
    try:
        args = json.loads(arguments)
    except ValueError as e:
        raise Err("the arguments are not JSON: %s" % e)
    try:
        return {"status": "ok", "result": call_tool(w, people, name, args)}
    except ToolError as e:
        return {"status": "error", "code": e.code, "message": e.message}


class WitWorld(wit_world.WitWorld):
    def tool_specs(self) -> str:
        return SPECS

    def call(self, world_state: str, tool_name: str, arguments: str) -> str:
        return json.dumps(call(world_state, tool_name, arguments), ensure_ascii=False)
