"""What the travel-planning plugins share: the task's world and query, submission parsing and
plan cost, mirroring environments/travel/src/{world,query,plan}.rs. Imported by
`travel_verifier.py` and `travel_toolset.py`; componentize-py bundles it with either.
"""

import datetime
import json

COMMONSENSE = [
    "commonsense.within_sandbox",
    "commonsense.complete_information",
    "commonsense.within_current_city",
    "commonsense.reasonable_city_route",
    "commonsense.diverse_restaurants",
    "commonsense.diverse_attractions",
    "commonsense.non_conflicting_transport",
    "commonsense.minimum_nights",
]
OPTIONAL = ["hard.room_rule", "hard.room_type", "hard.cuisine", "hard.transport",
            "hard.accommodation_rating", "hard.tiered_dining"]
PHRASE = {"flight": "flights", "self_driving": "self-driving", "taxi": "taxis", "train": "trains", "bus": "buses"}
CAPACITY = {"self_driving": 5, "taxi": 4}
MAX_ID = 64
DIGITS = set("0123456789")


class TaskError(Exception):
    pass


class Malformed(Exception):
    pass


def lookup(items, ident, prefix):
    if not isinstance(ident, str) or len(ident) < 2 or ident[0] != prefix or not set(ident[1:]) <= DIGITS:
        return None
    i = int(ident[1:])
    if i < len(items) and items[i]["id"] == ident:
        return items[i]
    return None


class World:
    def __init__(self, w):
        self.states = w["states"]
        self.cities = w["cities"]
        self.routes = w["routes"]
        self.accommodations = w["accommodations"]
        self.restaurants = w["restaurants"]
        self.attractions = w["attractions"]

    def city(self, i):
        return lookup(self.cities, i, "C")

    def route(self, i):
        return lookup(self.routes, i, "T")

    def accommodation(self, i):
        return lookup(self.accommodations, i, "H")

    def restaurant(self, i):
        return lookup(self.restaurants, i, "R")

    def attraction(self, i):
        return lookup(self.attractions, i, "A")


class Query:
    def __init__(self, constraints):
        by_id = {}
        for c in constraints:
            if c["id"] not in COMMONSENSE and c["id"] != "hard.budget" and c["id"] not in OPTIONAL:
                raise TaskError("unknown constraint id " + c["id"])
            by_id[c["id"]] = c["params"]
        for cid in COMMONSENSE + ["hard.budget"]:
            if cid not in by_id:
                raise TaskError("missing constraint " + cid)
        info = by_id["commonsense.complete_information"]
        route = by_id["commonsense.reasonable_city_route"]
        budget = by_id["hard.budget"]
        self.start = datetime.date.fromisoformat(info["start_date"])
        self.days = info["days"]
        self.origin = route["origin"]
        self.destination_state = route["destination_state"]
        self.destination_city = route.get("destination_city")
        self.visiting_cities = route["visiting_cities"]
        self.people = budget["people"]
        self.budget = budget["budget"]
        self.room_rule = by_id.get("hard.room_rule", {}).get("rule")
        self.room_type = by_id.get("hard.room_type", {}).get("room_type")
        self.cuisines = by_id.get("hard.cuisine", {}).get("cuisines", [])
        self.excluded = by_id.get("hard.transport", {}).get("excluded", [])
        self.min_rating = by_id.get("hard.accommodation_rating", {}).get("min_rating")
        self.tiered = by_id.get("hard.tiered_dining")

    def date(self, day):
        return (self.start + datetime.timedelta(days=day - 1)).isoformat()

    def check_ids(self):
        ids = list(COMMONSENSE) + ["hard.budget"]
        for cid, present in [
            ("hard.room_rule", self.room_rule is not None),
            ("hard.room_type", self.room_type is not None),
            ("hard.cuisine", bool(self.cuisines)),
            ("hard.transport", bool(self.excluded)),
            ("hard.accommodation_rating", self.min_rating is not None),
            ("hard.tiered_dining", self.tiered is not None),
        ]:
            if present:
                ids.append(cid)
        return ids


# ---- submission parsing (mirrors plan.rs) ----

def is_u32(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFFFFFF


def opt_str(day, key):
    v = day.get(key)
    if v is not None and not isinstance(v, str):
        raise Malformed(key)
    return v


def parse_plan(value):
    """Returns None for an empty submission, a list of day dicts for a plan; raises Malformed."""
    if value is None:
        return None
    if isinstance(value, str):
        t = value.strip()
        for prefix in ("```json", "```"):
            if t.startswith(prefix):
                t = t[len(prefix):]
                break
        if t.endswith("```"):
            t = t[:-3]
        t = t.strip()
        if not t:
            return None
        try:
            value = json.loads(t)
        except ValueError:
            raise Malformed("the submission text is not JSON")
    if isinstance(value, dict) and not value:
        return None
    if isinstance(value, dict) and len(value) == 1 and value.get("days") == []:
        return None
    if not isinstance(value, dict) or set(value) != {"days"} or not isinstance(value["days"], list):
        raise Malformed("not a plan")
    days = []
    allowed = {"day", "travel", "city", "breakfast", "lunch", "dinner", "attractions", "accommodation"}
    for d in value["days"]:
        if not isinstance(d, dict) or not set(d) <= allowed or "day" not in d or "city" not in d:
            raise Malformed("day")
        if not is_u32(d["day"]) or not isinstance(d["city"], str):
            raise Malformed("day fields")
        travel = d.get("travel")
        if travel is not None:
            if not isinstance(travel, dict) or set(travel) != {"from", "to", "transport"} \
                    or not all(isinstance(travel[k], str) for k in ("from", "to", "transport")):
                raise Malformed("travel")
        attractions = d.get("attractions", [])
        if not isinstance(attractions, list) or not all(isinstance(a, str) for a in attractions):
            raise Malformed("attractions")
        days.append({
            "day": d["day"], "travel": travel, "city": d["city"],
            "meals": [opt_str(d, "breakfast"), opt_str(d, "lunch"), opt_str(d, "dinner")],
            "attractions": attractions, "accommodation": opt_str(d, "accommodation"),
        })
    if not days:
        return None
    # The schema's size limits.
    if len(days) > 31:
        raise Malformed("too many days")
    for d in days:
        if not 1 <= d["day"] <= 31 or len(d["attractions"]) > 16:
            raise Malformed("size")
        strings = [d["city"], d["accommodation"]] + d["meals"] + d["attractions"]
        if d["travel"]:
            strings += [d["travel"]["from"], d["travel"]["to"], d["travel"]["transport"]]
        if any(s is not None and len(s.encode()) > MAX_ID for s in strings):
            raise Malformed("too long")
    return days



# ---- plan cost (mirrors plan.rs) ----

def touches(d, city):
    t = d["travel"]
    return d["city"] == city or (t is not None and (t["from"] == city or t["to"] == city))


def meals_of(d):
    return [m for m in d["meals"] if m is not None]


def ceil_div(a, b):
    return -(-a // b)


def route_cost(route, people):
    cap = CAPACITY.get(route["mode"])
    return route["price"] * (ceil_div(people, cap) if cap else people)


def plan_cost(w, people, days):
    """Cost by category and in total; unknown ids cost nothing here."""
    c = {"transport": 0, "meals": 0, "attractions": 0, "accommodation": 0}
    for d in days:
        r = w.route(d["travel"]["transport"]) if d["travel"] else None
        if r:
            c["transport"] += route_cost(r, people)
        for m in meals_of(d):
            r = w.restaurant(m)
            if r:
                c["meals"] += r["average_cost"] * people
        for a in d["attractions"]:
            x = w.attraction(a)
            if x:
                c["attractions"] += x["ticket_price"] * people
        h = w.accommodation(d["accommodation"]) if d["accommodation"] is not None else None
        if h:
            c["accommodation"] += h["nightly_price"] * ceil_div(people, h["max_occupancy"])
    c["total"] = c["transport"] + c["meals"] + c["attractions"] + c["accommodation"]
    return c


