"""meeting-scheduling: an environment authored entirely as a plugin of the `environment` world.

The agent schedules a week's meetings around everyone's calendar: each meeting needs a day, a
start time and a room such that no attendee or room is busy, no one is in two meetings at once,
the room is big enough and the request's extra rules hold (a time window, a day to avoid, an
order between meetings). Many schedules are valid; the verifier checks the rules, not equality
with the planted one.

Generation is a pure function of (seed, index, level, overrides, attempt): every random choice
comes from a `random.Random` seeded with that tuple (Python seeds a string through SHA-512, so the
sequence is the same on every platform). The host certifies each task with this verifier: the
planted schedule must pass and each mutant below must fail the check it targets.

Build:    envsynth plugin build environments/meeting/meeting_scheduling.py --world environment
Check:    envsynth plugin check environments/meeting/meeting_scheduling.wasm
Register: envsynth plugin register environments/meeting/meeting_scheduling.wasm
Generate: envsynth generate --env meeting-scheduling --count 100 --out out/meeting
"""

import json
import random

import wit_world
from componentize_py_types import Err

ENV_ID = "meeting-scheduling"
VERSION = "0.1.0"
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
SLOTS = 16  # 30-minute slots from 09:00 to 17:00
SLOT_MIN = 30
LEVELS = {
    # people, rooms, meetings, extra rules, busy blocks per person
    "easy": (5, 3, 2, 1, 3),
    "medium": (8, 4, 4, 2, 5),
    "hard": (12, 5, 6, 4, 7),
}
PARAMS = ("people", "rooms", "meetings", "rules", "busy")
LIMITS = {"people": (3, 40), "rooms": (2, 12), "meetings": (1, 12), "rules": (0, 12), "busy": (0, 12)}
FIRST = ["Ada", "Bo", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kemi", "Lars",
         "Mira", "Nico", "Oona", "Pia", "Quinn", "Ravi", "Sol", "Tess", "Uma", "Vik", "Wen", "Yara"]
TOPICS = ["roadmap review", "hiring sync", "design critique", "budget check", "incident retro",
          "customer call prep", "planning poker", "security review", "offsite planning", "demo dry run"]
CHECKS = ["schedule.complete", "schedule.within_hours", "schedule.attendees_free",
          "schedule.no_double_booking", "schedule.room_free", "schedule.room_capacity"]
RULES = ["hard.window", "hard.avoid_day", "hard.order"]


def hhmm(slot):
    m = 9 * 60 + slot * SLOT_MIN
    return "%02d:%02d" % (m // 60, m % 60)


def slot_of(text):
    """The slot index of an "HH:MM" start on the half hour, or None."""
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":" \
            or not (text[:2] + text[3:]).isdigit() or not text.isascii():
        return None
    m = int(text[:2]) * 60 + int(text[3:]) - 9 * 60
    if int(text[3:]) >= 60 or m % SLOT_MIN:
        return None
    return m // SLOT_MIN


def overlaps(a_day, a_start, a_len, b_day, b_start, b_len):
    return a_day == b_day and a_start < b_start + b_len and b_start < a_start + a_len


class Rejected(Exception):
    def __init__(self, stage, code, detail):
        super().__init__(detail)
        self.record = {"stage": stage, "code": code, "detail": detail}


# ---- generation ----

def level_params(level, overrides):
    params = dict(zip(PARAMS, LEVELS[level]))
    for k, v in (overrides or {}).items():
        if k not in LIMITS:
            raise Rejected("sample_params", "unknown_override", "unknown parameter %s" % k)
        lo, hi = LIMITS[k]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise Rejected("sample_params", "override_out_of_range", "%s must be an integer in %d..=%d" % (k, lo, hi))
        params[k] = v
    return params


def generate(request):
    level, attempt = request["level"], request["attempt"]
    if level not in LEVELS:
        raise Rejected("sample_params", "unknown_level", "unknown level %s" % level)
    p = level_params(level, request.get("overrides"))
    rng = random.Random("%s/%s/%d/%d/%s/%d" % (ENV_ID, VERSION, request["seed"], request["index"], level, attempt))
    names = rng.sample(FIRST, min(p["people"], len(FIRST)))
    people = [{"id": "P%d" % i, "name": names[i] if i < len(names) else "Guest %d" % i} for i in range(p["people"])]
    rooms = [{"id": "R0", "name": "Phone booth", "capacity": 2}]
    for i in range(1, p["rooms"]):
        rooms.append({"id": "R%d" % i, "name": "Room %s" % "ABCDEFGHIJKL"[i - 1], "capacity": rng.randint(4, 12)})
    big = max(r["capacity"] for r in rooms)

    # Meetings: everyone's organiser P0 attends all of them, so no two may overlap.
    meetings = []
    for i in range(p["meetings"]):
        others = rng.sample(range(1, p["people"]), min(p["people"] - 1, rng.randint(2, min(4, big - 1))))
        meetings.append({
            "id": "M%d" % i, "title": rng.choice(TOPICS),
            "attendees": ["P0"] + ["P%d" % j for j in sorted(others)],
            "duration_min": SLOT_MIN * rng.randint(1, 4),
        })

    # Plant a schedule.
    planted, used = [], []  # used: (day, start, len, room)
    for m in meetings:
        n = m["duration_min"] // SLOT_MIN
        options = [(d, s, r["id"]) for d in range(1, 6) for s in range(0, SLOTS - n + 1) for r in rooms
                   if r["capacity"] >= len(m["attendees"])
                   and not any(overlaps(d, s, n, ud, us, ul) for ud, us, ul, _ in used)]
        if not options:
            raise Rejected("plant", "no_slot", "no free slot for %s" % m["id"])
        d, s, room = rng.choice(options)
        used.append((d, s, n, room))
        planted.append({"meeting": m["id"], "day": d, "start": hhmm(s), "room": room})

    # Calendars: busy blocks that avoid the planted schedule.
    def busy_blocks(owner_uses, count):
        blocks = []
        for _ in range(count * 4):
            if len(blocks) == count:
                break
            d, n = rng.randint(1, 5), rng.randint(1, 4)
            s = rng.randint(0, SLOTS - n)
            if any(overlaps(d, s, n, ud, us, ul) for ud, us, ul in owner_uses + [(b[0], b[1], b[2]) for b in blocks]):
                continue
            blocks.append((d, s, n))
        return [{"day": d, "start": hhmm(s), "end": hhmm(s + n)} for d, s, n in sorted(blocks)]

    person_uses = {x["id"]: [] for x in people}
    room_uses = {r["id"]: [] for r in rooms}
    for m, (d, s, n, room) in zip(meetings, used):
        for a in m["attendees"]:
            person_uses[a].append((d, s, n))
        room_uses[room].append((d, s, n))
    for x in people:
        x["busy"] = busy_blocks(person_uses[x["id"]], p["busy"])
    for r in rooms:
        r["busy"] = busy_blocks(room_uses[r["id"]], max(1, p["busy"] // 2))

    # Extra rules the planted schedule satisfies.
    rules = []
    candidates = []
    for m, (d, s, n, _) in zip(meetings, used):
        if s + n <= 6:
            candidates.append(("hard.window", {"meeting": m["id"], "window": "morning"}))
        elif s >= 8:
            candidates.append(("hard.window", {"meeting": m["id"], "window": "afternoon"}))
        candidates.append(("hard.avoid_day", {"meeting": m["id"], "day": rng.choice([x for x in range(1, 6) if x != d])}))
    for a, ua in zip(meetings, used):
        for b, ub in zip(meetings, used):
            if (ua[0], ua[1]) < (ub[0], ub[1]):
                candidates.append(("hard.order", {"first": a["id"], "then": b["id"]}))
    rng.shuffle(candidates)
    seen = set()
    for kind, params in candidates:
        if len(rules) == p["rules"]:
            break
        if kind in seen and len(seen) < len(RULES):
            continue
        seen.add(kind)
        rules.append((kind, params))
    rules.sort(key=lambda r: (RULES.index(r[0]), json.dumps(r[1], sort_keys=True)))

    world = {"days": DAYS, "slot_minutes": SLOT_MIN, "hours": ["09:00", "17:00"],
             "people": people, "rooms": rooms, "meetings": meetings}
    constraints = [{"id": c, "description": CHECK_TEXT[c], "params": {}} for c in CHECKS]
    for kind in RULES:
        items = [params for k, params in rules if k == kind]
        if items:
            constraints.append({"id": kind, "description": rule_text(kind, items), "params": {"rules": items}})
    solution = {"meetings": planted}
    task = {
        "difficulty": {"level": level, "params": p},
        "prompt": prompt(world, constraints),
        "constraints": constraints,
        "world": world,
        "reference_solution": solution,
        "mutants": mutants(world, constraints, solution, used, rng),
    }
    return task


CHECK_TEXT = {
    "schedule.complete": "Schedule every meeting exactly once, naming only meetings that exist.",
    "schedule.within_hours": "Meetings start on the half hour and lie within 09:00-17:00, Monday to Friday.",
    "schedule.attendees_free": "No attendee is busy during their meeting.",
    "schedule.no_double_booking": "No one attends two meetings at once, and no room hosts two at once.",
    "schedule.room_free": "Every room exists and is free during its meeting.",
    "schedule.room_capacity": "Every room seats all of its meeting's attendees.",
}


def rule_text(kind, items):
    if kind == "hard.window":
        return "; ".join("%s must %s" % (r["meeting"], "end by 12:00" if r["window"] == "morning" else "start at 13:00 or later") for r in items)
    if kind == "hard.avoid_day":
        return "; ".join("%s must not be on %s" % (r["meeting"], DAYS[r["day"] - 1]) for r in items)
    return "; ".join("%s must end before %s starts" % (r["first"], r["then"]) for r in items)


def prompt(world, constraints):
    lines = ["Schedule these meetings this week (%s, 09:00-17:00, starts on the half hour):" % ", ".join(DAYS)]
    for m in world["meetings"]:
        lines.append("- %s \"%s\", %d min, attendees %s" % (m["id"], m["title"], m["duration_min"], ", ".join(m["attendees"])))
    lines.append("Rules:")
    lines += ["- " + c["description"] for c in constraints]
    lines.append('Use the tools to read calendars and rooms, then answer with JSON: '
                 '{"meetings": [{"meeting": "M0", "day": 1, "start": "09:30", "room": "R1"}, ...]} '
                 "(day 1 is Monday).")
    return [
        {"role": "system", "content": "You are a scheduling assistant. Call tools to look things up; "
                                      "finish by submitting one schedule."},
        {"role": "user", "content": "\n".join(lines)},
    ]


def mutants(world, constraints, solution, used, rng):
    """One copy of the planted schedule per check, broken so that check fails."""
    base = solution["meetings"]
    out = []

    def variant(target, change):
        s = [dict(x) for x in base]
        change(s)
        out.append({"target": target, "solution": {"meetings": s}})

    variant("schedule.complete", lambda s: s.pop())
    variant("schedule.within_hours", lambda s: s[0].update(start="08:00"))
    # Move a meeting onto a busy block of one of its attendees.
    m0 = world["meetings"][0]
    n0 = m0["duration_min"] // SLOT_MIN
    blocks = [(b["day"], slot_of(b["start"])) for a in m0["attendees"] for x in world["people"] if x["id"] == a
              for b in x["busy"]]
    blocks = [b for b in blocks if b[1] + n0 <= SLOTS]
    if blocks:
        d, s = blocks[0]
        variant("schedule.attendees_free", lambda v: v[0].update(day=d, start=hhmm(s)))
    if len(base) > 1:
        # Move the shorter of M0 and M1 onto the other's start, so it still ends by 17:00.
        i, j = (0, 1) if world["meetings"][0]["duration_min"] >= world["meetings"][1]["duration_min"] else (1, 0)
        variant("schedule.no_double_booking", lambda s: s[j].update(day=s[i]["day"], start=s[i]["start"]))
    variant("schedule.room_free", lambda s: s[0].update(room="R99"))
    variant("schedule.room_capacity", lambda s: s[0].update(room="R0"))
    by_id = {x["meeting"]: i for i, x in enumerate(base)}
    for c in constraints:
        for r in c["params"].get("rules", []):
            if c["id"] == "hard.window":
                i = by_id[r["meeting"]]
                start = "14:00" if r["window"] == "morning" else "09:00"
                variant(c["id"], lambda s, i=i, start=start: s[i].update(start=start))
            elif c["id"] == "hard.avoid_day":
                i = by_id[r["meeting"]]
                variant(c["id"], lambda s, i=i, day=r["day"]: s[i].update(day=day))
            else:
                # `then` starts where `first` starts, so `first` no longer ends before it (the
                # shorter one moves, so it still ends by 17:00).
                i, j = by_id[r["first"]], by_id[r["then"]]
                if world["meetings"][j]["duration_min"] > world["meetings"][i]["duration_min"]:
                    variant(c["id"], lambda s, i=i, j=j: s[i].update(day=s[j]["day"], start=s[j]["start"]))
                else:
                    variant(c["id"], lambda s, i=i, j=j: s[j].update(day=s[i]["day"], start=s[i]["start"]))
            break
    return out


# ---- verification ----

class Malformed(Exception):
    pass


def parse_schedule(value):
    """None when nothing was delivered; a list of entries; raises Malformed."""
    if value is None:
        return None
    if isinstance(value, str):
        t = value.strip()
        if t.startswith("```"):
            t = t[3:].removeprefix("json")
        t = t.removesuffix("```").strip()
        if not t:
            return None
        try:
            value = json.loads(t)
        except ValueError:
            raise Malformed("the submission text is not JSON")
    if value == {} or value == {"meetings": []}:
        return None
    if not isinstance(value, dict) or set(value) != {"meetings"} or not isinstance(value["meetings"], list):
        raise Malformed('expected {"meetings": [...]}')
    if len(value["meetings"]) > 64:
        raise Malformed("at most 64 entries")
    out = []
    for i, e in enumerate(value["meetings"]):
        if not isinstance(e, dict) or set(e) != {"meeting", "day", "start", "room"}:
            raise Malformed("meetings[%d]: expected exactly meeting, day, start, room" % i)
        if not all(isinstance(e[k], str) and len(e[k]) <= 64 for k in ("meeting", "start", "room")) \
                or not isinstance(e["day"], int) or isinstance(e["day"], bool):
            raise Malformed("meetings[%d]: meeting, start and room are strings; day is an integer" % i)
        out.append(e)
    return out


def check(cid, problems, ok):
    if problems:
        text = "; ".join(problems[:3]) + ("; and %d more" % (len(problems) - 3) if len(problems) > 3 else "")
        return {"id": cid, "status": "failed", "reason": text}
    return {"id": cid, "status": "passed", "reason": ok}


def verify_schedule(world, constraints, entries):
    meetings = {m["id"]: m for m in world["meetings"]}
    people = {x["id"]: x for x in world["people"]}
    rooms = {r["id"]: r for r in world["rooms"]}
    checks = []

    bad, counts = [], {}
    for e in entries:
        if e["meeting"] not in meetings:
            bad.append("unknown meeting %s" % e["meeting"])
        counts[e["meeting"]] = counts.get(e["meeting"], 0) + 1
    for mid in meetings:
        if counts.get(mid, 0) == 0:
            bad.append("%s is not scheduled" % mid)
        elif counts[mid] > 1:
            bad.append("%s is scheduled %d times" % (mid, counts[mid]))
    checks.append(check("schedule.complete", bad, "%d meetings scheduled once each" % len(meetings)))

    placed, bad = [], []  # (entry, day, start slot, length) of entries with a valid time
    for e in entries:
        m = meetings.get(e["meeting"])
        s = slot_of(e["start"])
        n = m["duration_min"] // SLOT_MIN if m else 1
        if not 1 <= e["day"] <= 5:
            bad.append("%s: day %d is not Monday (1) to Friday (5)" % (e["meeting"], e["day"]))
        elif s is None or s < 0:
            bad.append("%s: %s is not a half-hour start from 09:00" % (e["meeting"], e["start"]))
        elif s + n > SLOTS:
            bad.append("%s: %s + %d min ends after 17:00" % (e["meeting"], e["start"], n * SLOT_MIN))
        elif m is not None:
            placed.append((e, e["day"], s, n))
    checks.append(check("schedule.within_hours", bad, "all within working hours"))

    bad = []
    for e, d, s, n in placed:
        for a in meetings[e["meeting"]]["attendees"]:
            for b in people[a]["busy"]:
                bs, be = slot_of(b["start"]), slot_of(b["end"])
                if overlaps(d, s, n, b["day"], bs, be - bs):
                    bad.append("%s: %s is busy %s %s-%s" % (e["meeting"], a, DAYS[d - 1], b["start"], b["end"]))
    checks.append(check("schedule.attendees_free", bad, "every attendee is free"))

    bad = []
    for i, (e, d, s, n) in enumerate(placed):
        for f, d2, s2, n2 in placed[i + 1:]:
            if overlaps(d, s, n, d2, s2, n2):
                shared = sorted(set(meetings[e["meeting"]]["attendees"]) & set(meetings[f["meeting"]]["attendees"]))
                if shared:
                    bad.append("%s and %s overlap for %s" % (e["meeting"], f["meeting"], ", ".join(shared)))
                if e["room"] == f["room"]:
                    bad.append("%s and %s overlap in %s" % (e["meeting"], f["meeting"], e["room"]))
    checks.append(check("schedule.no_double_booking", bad, "no one is in two places at once"))

    bad = []
    for e in entries:
        if e["room"] not in rooms:
            bad.append("%s: no room %s" % (e["meeting"], e["room"]))
    for e, d, s, n in placed:
        r = rooms.get(e["room"])
        for b in (r["busy"] if r else []):
            bs, be = slot_of(b["start"]), slot_of(b["end"])
            if overlaps(d, s, n, b["day"], bs, be - bs):
                bad.append("%s: %s is booked %s %s-%s" % (e["meeting"], e["room"], DAYS[d - 1], b["start"], b["end"]))
    checks.append(check("schedule.room_free", bad, "every room is free"))

    bad = []
    for e in entries:
        m, r = meetings.get(e["meeting"]), rooms.get(e["room"])
        if m and r and r["capacity"] < len(m["attendees"]):
            bad.append("%s: %s seats %d, %d attend" % (e["meeting"], r["id"], r["capacity"], len(m["attendees"])))
    checks.append(check("schedule.room_capacity", bad, "every room is big enough"))

    when = {e["meeting"]: (d, s, n) for e, d, s, n in placed}
    for c in constraints:
        if c["id"] not in RULES:
            continue
        bad = []
        for r in c["params"]["rules"]:
            if c["id"] == "hard.window":
                t = when.get(r["meeting"])
                if t is None:
                    bad.append("%s is not placed" % r["meeting"])
                elif r["window"] == "morning" and t[1] + t[2] > 6:
                    bad.append("%s ends after 12:00" % r["meeting"])
                elif r["window"] == "afternoon" and t[1] < 8:
                    bad.append("%s starts before 13:00" % r["meeting"])
            elif c["id"] == "hard.avoid_day":
                t = when.get(r["meeting"])
                if t is None:
                    bad.append("%s is not placed" % r["meeting"])
                elif t[0] == r["day"]:
                    bad.append("%s is on %s" % (r["meeting"], DAYS[r["day"] - 1]))
            else:
                a, b = when.get(r["first"]), when.get(r["then"])
                if a is None or b is None:
                    bad.append("%s or %s is not placed" % (r["first"], r["then"]))
                elif (a[0], a[1] + a[2]) > (b[0], b[1]):
                    bad.append("%s does not end before %s starts" % (r["first"], r["then"]))
        checks.append(check(c["id"], bad, "all %d rule(s) hold" % len(c["params"]["rules"])))
    return checks


def verdict(task_id, checks, kind=None, error=None):
    passed = kind is None and all(c["status"] == "passed" for c in checks)
    if kind is None:
        kind = "none" if passed else "wrong_answer"
    v = {"task_id": task_id, "reward": 1.0 if passed else 0.0, "passed": passed, "failure_kind": kind,
         "mask": False, "checks": checks}
    if error is not None:
        v["error"] = error
    return v


def verify(task, submission):
    ids = [c["id"] for c in task["constraints"]]
    try:
        entries = parse_schedule(submission)
    except Malformed as e:
        reason = "the submission is not a schedule in the required format"
        return verdict(task["id"], [{"id": c, "status": "skipped", "reason": reason} for c in ids],
                       "malformed_submission", str(e))
    if entries is None:
        return verdict(task["id"], [{"id": c, "status": "skipped", "reason": "no schedule was delivered"} for c in ids],
                       "empty_submission", "the submission is empty")
    return verdict(task["id"], verify_schedule(task["world"], task["constraints"], entries))


# ---- tools ----

def obj(props, required):
    return {"type": "object", "additionalProperties": False, "properties": props, "required": required}


ID = {"type": "string", "maxLength": 16}
DAY = {"type": "integer", "minimum": 1, "maximum": 5}
TOOLS = [
    {"name": "list_people", "description": "Everyone in the office: id and name.",
     "parameters": obj({}, []), "result": {"type": "object"}},
    {"name": "list_rooms", "description": "Every room: id, name and how many it seats.",
     "parameters": obj({}, []), "result": {"type": "object"}},
    {"name": "get_busy", "description": "The busy blocks of a person or room (optionally on one day).",
     "parameters": obj({"id": ID, "day": DAY}, ["id"]), "result": {"type": "object"}},
    {"name": "find_free_slots",
     "description": "Start times on a day when every listed person is free for the whole duration.",
     "parameters": obj({"people": {"type": "array", "items": ID, "maxItems": 40}, "day": DAY,
                        "duration_min": {"type": "integer", "minimum": 30, "maximum": 480}},
                       ["people", "day", "duration_min"]),
     "result": {"type": "object"}},
    {"name": "check_room", "description": "Whether a room is free from a start time for a duration.",
     "parameters": obj({"room": ID, "day": DAY, "start": {"type": "string", "maxLength": 5},
                        "duration_min": {"type": "integer", "minimum": 30, "maximum": 480}},
                       ["room", "day", "start", "duration_min"]),
     "result": {"type": "object"}},
]


class ToolError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def check_args(tool, args):
    schema = tool["parameters"]
    name = tool["name"]
    if not isinstance(args, dict):
        raise ToolError("invalid_arguments", "%s: arguments: expected an object" % name)
    for k in args:
        if k not in schema["properties"]:
            raise ToolError("invalid_arguments", "%s: arguments: unexpected property %s" % (name, k))
    for k in schema["required"]:
        if k not in args:
            raise ToolError("invalid_arguments", "%s: arguments: %s is required" % (name, k))
    for k, v in args.items():
        s = schema["properties"][k]
        where = "%s: arguments/%s" % (name, k)
        if s.get("type") == "string" and (not isinstance(v, str) or len(v) > s["maxLength"]):
            raise ToolError("invalid_arguments", "%s: expected a string of at most %d characters" % (where, s["maxLength"]))
        if s.get("type") == "integer" and (not isinstance(v, int) or isinstance(v, bool)
                                           or not s["minimum"] <= v <= s["maximum"]):
            raise ToolError("invalid_arguments", "%s: expected an integer in %d..=%d" % (where, s["minimum"], s["maximum"]))
        if s.get("type") == "array" and (not isinstance(v, list) or len(v) > s["maxItems"]
                                         or not all(isinstance(x, str) for x in v)):
            raise ToolError("invalid_arguments", "%s: expected a list of ids" % where)


def call_tool(world, name, args):
    tool = next((t for t in TOOLS if t["name"] == name), None)
    if tool is None:
        raise ToolError("unknown_tool", "no tool named `%s`; tools are %s" % (name, ", ".join(t["name"] for t in TOOLS)))
    check_args(tool, args)
    people = {x["id"]: x for x in world["people"]}
    rooms = {r["id"]: r for r in world["rooms"]}
    if name == "list_people":
        return {"people": [{"id": x["id"], "name": x["name"]} for x in world["people"]]}
    if name == "list_rooms":
        return {"rooms": [{"id": r["id"], "name": r["name"], "capacity": r["capacity"]} for r in world["rooms"]]}
    if name == "get_busy":
        owner = people.get(args["id"]) or rooms.get(args["id"])
        if owner is None:
            raise ToolError("not_found", "get_busy: no person or room `%s` (use list_people or list_rooms)" % args["id"])
        day = args.get("day")
        return {"busy": [b for b in owner["busy"] if day is None or b["day"] == day]}
    if name == "find_free_slots":
        n = -(-args["duration_min"] // SLOT_MIN)
        for p in args["people"]:
            if p not in people:
                raise ToolError("not_found", "find_free_slots: no person `%s` (use list_people)" % p)
        free = []
        for s in range(0, SLOTS - n + 1):
            if not any(overlaps(args["day"], s, n, b["day"], slot_of(b["start"]), slot_of(b["end"]) - slot_of(b["start"]))
                       for p in args["people"] for b in people[p]["busy"]):
                free.append(hhmm(s))
        return {"day": args["day"], "starts": free}
    if name == "check_room":
        r = rooms.get(args["room"])
        if r is None:
            raise ToolError("not_found", "check_room: no room `%s` (use list_rooms)" % args["room"])
        s = slot_of(args["start"])
        n = -(-args["duration_min"] // SLOT_MIN)
        if s is None or s < 0 or s + n > SLOTS:
            raise ToolError("invalid_arguments", "check_room: arguments/start: not a half-hour time within 09:00-17:00")
        clash = [b for b in r["busy"] if overlaps(args["day"], s, n, b["day"], slot_of(b["start"]), slot_of(b["end"]) - slot_of(b["start"]))]
        return {"room": r["id"], "capacity": r["capacity"], "free": not clash, "conflicts": clash}
    raise ToolError("unknown_tool", "tool `%s` is declared but not implemented" % name)


# ---- the component ----

class WitWorld(wit_world.WitWorld):
    def spec(self) -> str:
        return json.dumps({
            "id": ENV_ID, "version": VERSION, "levels": list(LEVELS),
            "tags": ["scheduling", "calendar", "tool-use"], "license": "Apache-2.0",
            "description": "Schedule a week's meetings around people's and rooms' calendars, with time "
                           "windows, days to avoid and ordering rules (a Python plugin).",
        })

    def generate(self, request: str) -> str:
        try:
            return json.dumps(generate(json.loads(request)), ensure_ascii=False)
        except Rejected as e:
            raise Err(json.dumps(e.record))
        except (KeyError, TypeError, ValueError) as e:
            raise Err(json.dumps({"stage": "sample_params", "code": "bad_request", "detail": repr(e)}))

    def tool_specs(self) -> str:
        return json.dumps(TOOLS)

    def call(self, world_state: str, tool_name: str, arguments: str) -> str:
        try:
            world = json.loads(world_state)["world"]
            args = json.loads(arguments)
        except (KeyError, TypeError, ValueError) as e:
            raise Err("cannot read the call: %r" % e)
        try:
            return json.dumps({"status": "ok", "result": call_tool(world, tool_name, args)})
        except ToolError as e:
            return json.dumps({"status": "error", "code": e.code, "message": str(e)})

    def verify(self, task: str, submission: str) -> str:
        try:
            t = json.loads(task)
            sub = json.loads(submission)
        except ValueError as e:
            raise Err("cannot read the task or submission: %s" % e)
        try:
            return json.dumps(verify(t, sub), ensure_ascii=False)
        except (KeyError, TypeError, IndexError) as e:
            raise Err("the task record cannot be read: %r" % e)
