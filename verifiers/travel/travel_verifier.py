"""The travel-planning verifier, ported to Python as a plugin of the `verifier` world.

It must give verdicts identical to the native one (environments/travel/src/verify.rs): same
checks, statuses, reasons, reward and failure kind. `envsynth plugin check` compares the two.
Build it with `envsynth plugin build verifiers/travel/travel_verifier.py`. The parts it shares
with the toolset live in `travel_common.py`.
"""

import json

import wit_world
from componentize_py_types import Err

from travel_common import (
    PHRASE, Malformed, Query, TaskError, World, meals_of, parse_plan, plan_cost, touches,
)

# ---- the checks (mirrors verify.rs) ----

def listing(items):
    s = "; ".join(items[:3])
    if len(items) > 3:
        s += "; and %d more" % (len(items) - 3)
    return s


def check(cid, problems, ok):
    if problems:
        return {"id": cid, "status": "failed", "reason": listing(problems)}
    return {"id": cid, "status": "passed", "reason": ok}


def room_type_ok(req, room_type):
    return room_type != "shared room" if req == "not shared room" else room_type == req


def verify_plan(w, q, days):
    checks = []
    n = len(days)

    bad = []
    for d in days:
        k = d["day"]
        if w.city(d["city"]) is None:
            bad.append("day %d: unknown city %s" % (k, d["city"]))
        t = d["travel"]
        if t is not None:
            r = w.route(t["transport"])
            if r is None:
                bad.append("day %d: unknown transport %s" % (k, t["transport"]))
            else:
                if r["from"] != t["from"] or r["to"] != t["to"]:
                    bad.append("day %d: %s runs %s\u2192%s, not %s\u2192%s" % (k, r["id"], r["from"], r["to"], t["from"], t["to"]))
                if r["date"] is not None and r["date"] != q.date(k):
                    bad.append("day %d: %s runs on %s, not %s" % (k, r["id"], r["date"], q.date(k)))
        for m in meals_of(d):
            if w.restaurant(m) is None:
                bad.append("day %d: unknown restaurant %s" % (k, m))
        for a in d["attractions"]:
            if w.attraction(a) is None:
                bad.append("day %d: unknown attraction %s" % (k, a))
        h = d["accommodation"]
        if h is not None and w.accommodation(h) is None:
            bad.append("day %d: unknown accommodation %s" % (k, h))
    sandbox_ok = not bad
    checks.append(check("commonsense.within_sandbox", bad, "every id exists and every route matches its day"))

    bad = []
    if n != q.days:
        bad.append("%d days given, %d required" % (n, q.days))
    for i, d in enumerate(days):
        k = d["day"]
        if k != i + 1:
            bad.append("entry %d is numbered day %d" % (i + 1, k))
        for slot, m in zip(["breakfast", "lunch", "dinner"], d["meals"]):
            if m is None:
                bad.append("day %d: no %s" % (k, slot))
        if d["travel"] is None and not d["attractions"]:
            bad.append("day %d: no attraction on a day without travel" % k)
        last = i + 1 == n
        h = d["accommodation"]
        if h is None and not last:
            bad.append("day %d: no accommodation" % k)
        elif h is not None and last:
            bad.append("day %d: accommodation %s booked on the last day" % (k, h))
    complete_ok = not bad
    checks.append(check("commonsense.complete_information", bad, "%d complete days" % n))

    bad = []
    for i, d in enumerate(days):
        k = d["day"]
        t = d["travel"]
        if t is not None:
            if t["to"] != d["city"]:
                bad.append("day %d: travels to %s but ends in %s" % (k, t["to"], d["city"]))
            if i > 0 and t["from"] != days[i - 1]["city"]:
                bad.append("day %d: leaves from %s but day %d ended in %s" % (k, t["from"], k - 1, days[i - 1]["city"]))
        elif i > 0 and d["city"] != days[i - 1]["city"]:
            bad.append("day %d: ends in %s without travelling from %s" % (k, d["city"], days[i - 1]["city"]))
        for m in meals_of(d):
            r = w.restaurant(m)
            if r is not None and not touches(d, r["city"]):
                bad.append("day %d: restaurant %s is in %s" % (k, m, r["city"]))
        for a in d["attractions"]:
            x = w.attraction(a)
            if x is not None and not touches(d, x["city"]):
                bad.append("day %d: attraction %s is in %s" % (k, a, x["city"]))
        h = w.accommodation(d["accommodation"]) if d["accommodation"] is not None else None
        if h is not None and h["city"] != d["city"]:
            bad.append("day %d: accommodation %s is in %s, the day ends in %s" % (k, h["id"], h["city"], d["city"]))
    checks.append(check("commonsense.within_current_city", bad, "every venue lies in its day's cities"))

    bad = []
    first = days[0]["travel"] if days else None
    if first is None:
        bad.append("day 1 does not depart from the origin")
    elif first["from"] != q.origin:
        bad.append("day 1 departs from %s, not the origin %s" % (first["from"], q.origin))
    if not days:
        bad.append("no days")
    elif not (days[-1]["city"] == q.origin and days[-1]["travel"] is not None):
        bad.append("the last day ends in %s, not back at the origin %s" % (days[-1]["city"], q.origin))
    visited = []
    for d in days[:max(n - 1, 0)]:
        if d["city"] == q.origin:
            bad.append("day %d: back at the origin before the last day" % d["day"])
        elif not visited or visited[-1] != d["city"]:
            if d["city"] in visited:
                bad.append("day %d: revisits %s" % (d["day"], d["city"]))
            else:
                visited.append(d["city"])
    if len(visited) != q.visiting_cities:
        bad.append("visits %d cities, %d required" % (len(visited), q.visiting_cities))
    for c in visited:
        city = w.city(c)
        if city is not None:
            if city["state"] != q.destination_state:
                bad.append("%s is in %s, not %s" % (c, city["state"], q.destination_state))
            elif q.destination_city is not None and q.destination_city != c:
                bad.append("%s is not the destination city" % c)
    checks.append(check("commonsense.reasonable_city_route", bad, "closed route through " + ", ".join(visited)))

    for cid, what, items in [
        ("commonsense.diverse_restaurants", "restaurant", [m for d in days for m in meals_of(d)]),
        ("commonsense.diverse_attractions", "attraction", [a for d in days for a in d["attractions"]]),
    ]:
        seen, dup = set(), []
        for x in items:
            if x in seen:
                dup.append("%s %s repeated" % (what, x))
            seen.add(x)
        checks.append(check(cid, dup, "%d distinct %ss" % (len(items), what)))

    modes = []
    for d in days:
        r = w.route(d["travel"]["transport"]) if d["travel"] is not None else None
        if r is not None:
            modes.append(r["mode"])
    bad = []
    for other in ["flight", "taxi"]:
        if "self_driving" in modes and other in modes:
            bad.append("self-driving combined with " + PHRASE[other])
    checks.append(check("commonsense.non_conflicting_transport", bad, "transport modes are compatible"))

    bad = []
    i = 0
    while i < n:
        h = days[i]["accommodation"]
        if h is None:
            i += 1
            continue
        j = i
        while j < n and days[j]["accommodation"] == h:
            j += 1
        acc = w.accommodation(h)
        if acc is not None and j - i < acc["min_nights"]:
            bad.append("%s: %d nights from day %d, minimum %d" % (h, j - i, i + 1, acc["min_nights"]))
        i = j
    checks.append(check("commonsense.minimum_nights", bad, "every stay meets its minimum nights"))

    hard_ids = [c for c in q.check_ids() if c.startswith("hard.")]
    if not (sandbox_ok and complete_ok):
        for cid in hard_ids:
            checks.append({"id": cid, "status": "skipped",
                           "reason": "not evaluated: the plan is incomplete or names unknown ids"})
        return checks
    stays = [w.accommodation(d["accommodation"]) for d in days if d["accommodation"] is not None]
    stays = [h for h in stays if h is not None]
    total = plan_cost(w, q.people, days)["total"]
    checks.append({"id": "hard.budget", "status": "passed" if total <= q.budget else "failed",
                   "reason": "total cost $%d against a budget of $%d" % (total, q.budget)})
    if q.room_rule is not None:
        bad = ["%s forbids %s" % (h["id"], q.room_rule) for h in stays if q.room_rule in h["forbids"]]
        checks.append(check("hard.room_rule", bad, "every stay allows " + q.room_rule))
    if q.room_type is not None:
        bad = ["%s is a %s" % (h["id"], h["room_type"]) for h in stays if not room_type_ok(q.room_type, h["room_type"])]
        checks.append(check("hard.room_type", bad, "every stay is a " + q.room_type))
    if q.cuisines:
        served = [r for d in days for m in meals_of(d) for r in [w.restaurant(m)] if r is not None and r["city"] != q.origin]
        bad = ["no %s meal" % c for c in q.cuisines if not any(c in r["cuisines"] for r in served)]
        checks.append(check("hard.cuisine", bad, ", ".join(q.cuisines) + " all served"))
    if q.excluded:
        bad = ["uses " + PHRASE[m] for m in modes if m in q.excluded]
        checks.append(check("hard.transport", bad, "no excluded transport"))
    if q.min_rating is not None:
        bad = ["%s is rated %.1f" % (h["id"], h["rating"]) for h in stays if h["rating"] < q.min_rating]
        checks.append(check("hard.accommodation_rating", bad, "every stay rated at least %.1f" % q.min_rating))
    if q.tiered is not None:
        checks.append(tiered_check(w, q.tiered, days))
    return checks


def tiered_check(w, rule, days):
    cid = "hard.tiered_dining"
    dnum = rule["day"]
    if dnum < 1 or dnum > len(days):
        return {"id": cid, "status": "failed", "reason": "there is no day %d" % dnum}
    day = days[dnum - 1]
    h = w.accommodation(day["accommodation"]) if day["accommodation"] is not None else None
    if h is None:
        return {"id": cid, "status": "failed", "reason": "day %d has no accommodation to set the tier" % dnum}
    price = h["nightly_price"]
    tier = None
    for t in rule["tiers"]:
        if price >= t["min_price"] and (t.get("max_price") is None or price < t["max_price"]):
            tier = t
            break
    if tier is None:
        return {"id": cid, "status": "passed", "reason": "$%d per night falls in no tier" % price}
    meals = [r for r in (w.restaurant(m) for m in meals_of(day)) if r is not None]
    bad = []
    cap = tier.get("max_meal_cost")
    if cap is not None:
        total = sum(r["average_cost"] for r in meals)
        if total >= cap:
            bad.append("day %d meals cost $%d per person, limit below $%d" % (dnum, total, cap))
    rated = sum(1 for r in meals if r["rating"] >= tier["min_rating"])
    ok = rated == len(meals) if tier["quantifier"] == "all" else rated >= 1
    if not ok:
        bad.append("day %d: %d of %d restaurants rated at least %.1f" % (dnum, rated, len(meals), tier["min_rating"]))
    cap = tier.get("max_ticket")
    if cap is not None:
        for a in day["attractions"]:
            x = w.attraction(a)
            if x is not None and x["ticket_price"] >= cap:
                bad.append("day %d: %s costs $%d, limit below $%d" % (dnum, x["id"], x["ticket_price"], cap))
    return check(cid, bad, "day %d follows the $%d+ tier's rules" % (dnum, tier["min_price"]))


def verdict(task_id, checks, kind=None, error=None):
    if kind is None:
        passed = bool(checks) and all(c["status"] == "passed" for c in checks)
        kind = "none" if passed else "wrong_answer"
    else:
        passed = False
    v = {"task_id": task_id, "reward": 1.0 if passed else 0.0, "passed": passed, "failure_kind": kind,
         "mask": False, "checks": checks}
    if error is not None:
        v["error"] = error
    return v


def verify(task_json, submission_json):
    try:
        task = json.loads(task_json)
        w = World(task["world"])
        q = Query(task["constraints"])
        task_id = task["id"]
    except (KeyError, TypeError, ValueError, TaskError) as e:
        raise Err("the task record cannot be read: %s" % e)
    ids = q.check_ids()
    try:
        days = parse_plan(json.loads(submission_json))
    except Malformed as e:
        reason = "the submission is not a plan in the required format"
        return verdict(task_id, [{"id": c, "status": "skipped", "reason": reason} for c in ids],
                       "malformed_submission", str(e))
    if days is None:
        return verdict(task_id, [{"id": c, "status": "skipped", "reason": "no plan was delivered"} for c in ids],
                       "empty_submission", "the submission is empty")
    return verdict(task_id, verify_plan(w, q, days))


class WitWorld(wit_world.WitWorld):
    def verify(self, task: str, submission: str) -> str:
        return json.dumps(verify(task, submission), ensure_ascii=False)
