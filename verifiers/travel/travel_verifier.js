// The travel-planning verifier, ported to JavaScript as a plugin of the `verifier` world.
//
// It must give verdicts identical to the native one (environments/travel/src/verify.rs) and to the
// Python port beside it (travel_verifier.py): same checks, statuses, reasons, reward and failure
// kind. `envsynth plugin check` compares it with the native verifier.
// Build it with `envsynth plugin build verifiers/travel/travel_verifier.js`.

const COMMONSENSE = [
  "commonsense.within_sandbox",
  "commonsense.complete_information",
  "commonsense.within_current_city",
  "commonsense.reasonable_city_route",
  "commonsense.diverse_restaurants",
  "commonsense.diverse_attractions",
  "commonsense.non_conflicting_transport",
  "commonsense.minimum_nights",
];
const OPTIONAL = ["hard.room_rule", "hard.room_type", "hard.cuisine", "hard.transport",
  "hard.accommodation_rating", "hard.tiered_dining"];
const PHRASE = { flight: "flights", self_driving: "self-driving", taxi: "taxis", train: "trains", bus: "buses" };
const CAPACITY = { self_driving: 5, taxi: 4 };
const MAX_ID = 64;

class TaskError extends Error {}
class Malformed extends Error {}

// ---- JSON with integers kept apart from floats ----
//
// A plan's `day` must be an integer: `1.0` is malformed, as it is for serde and Python. JSON.parse
// cannot tell the two apart, so submissions go through this small parser, which returns integer
// literals as numbers (BigInt beyond 2^53) and other numbers wrapped in `Float`.

class Float {
  constructor(value) {
    this.value = value;
  }
}

function parseJson(text) {
  let i = 0;
  const fail = () => {
    throw new Malformed("the submission text is not JSON");
  };
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const value = () => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const o = {};
      ws();
      if (text[i] === "}") {
        i++;
        return o;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail();
        const k = string();
        ws();
        if (text[i] !== ":") fail();
        i++;
        Object.defineProperty(o, k, { value: value(), enumerable: true, writable: true, configurable: true });
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "}") {
          i++;
          return o;
        }
        fail();
      }
    }
    if (c === "[") {
      i++;
      const a = [];
      ws();
      if (text[i] === "]") {
        i++;
        return a;
      }
      for (;;) {
        a.push(value());
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "]") {
          i++;
          return a;
        }
        fail();
      }
    }
    if (c === '"') return string();
    for (const [word, v] of [["true", true], ["false", false], ["null", null]]) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return v;
      }
    }
    const m = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
    m.lastIndex = i;
    const got = m.exec(text);
    if (!got) fail();
    i = m.lastIndex;
    if (got[2] === undefined && got[3] === undefined) {
      const n = Number(got[0]);
      return Number.isSafeInteger(n) ? n : BigInt(got[0]);
    }
    return new Float(Number(got[0]));
  };
  const string = () => {
    // Find the closing quote (one not escaped by an odd run of backslashes), then let the
    // engine's JSON.parse decode the literal and reject control characters and bad escapes.
    let q = i;
    for (;;) {
      q = text.indexOf('"', q + 1);
      if (q < 0) fail();
      let k = q - 1;
      while (text[k] === "\\") k--;
      if ((q - 1 - k) % 2 === 0) break;
    }
    const literal = text.slice(i, q + 1);
    i = q + 1;
    try {
      return JSON.parse(literal);
    } catch {
      return fail();
    }
  };
  const v = value();
  ws();
  if (i !== text.length) fail();
  return v;
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Float);
const keys = (o) => Object.keys(o);
const isU32 = (v) => typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
const utf8Length = (s) => {
  // Each UTF-16 unit is at least one UTF-8 byte and at most three: only mid-length strings need
  // counting (the interpreter is slow on long loops).
  if (s.length > MAX_ID) return s.length;
  let n = 0;
  for (const ch of s) {
    const c = ch.codePointAt(0);
    n += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
  }
  return n;
};

// ---- the task ----

function lookup(items, ident, prefix) {
  if (typeof ident !== "string" || ident.length < 2 || ident[0] !== prefix || !/^[0-9]+$/.test(ident.slice(1))) {
    return null;
  }
  const i = Number(ident.slice(1));
  if (i < items.length && items[i].id === ident) return items[i];
  return null;
}

class World {
  constructor(w) {
    for (const k of ["cities", "routes", "accommodations", "restaurants", "attractions"]) {
      if (!Array.isArray(w[k])) throw new TaskError("world." + k + " is not a list");
    }
    this.cities = w.cities;
    this.routes = w.routes;
    this.accommodations = w.accommodations;
    this.restaurants = w.restaurants;
    this.attractions = w.attractions;
  }
  city(i) {
    return lookup(this.cities, i, "C");
  }
  route(i) {
    return lookup(this.routes, i, "T");
  }
  accommodation(i) {
    return lookup(this.accommodations, i, "H");
  }
  restaurant(i) {
    return lookup(this.restaurants, i, "R");
  }
  attraction(i) {
    return lookup(this.attractions, i, "A");
  }
}

function addDays(iso, n) {
  const [y, m, d] = iso.split("-").map(Number);
  const t = new Date(Date.UTC(y, m - 1, d + n));
  const pad = (x, w) => String(x).padStart(w, "0");
  return pad(t.getUTCFullYear(), 4) + "-" + pad(t.getUTCMonth() + 1, 2) + "-" + pad(t.getUTCDate(), 2);
}

class Query {
  constructor(constraints) {
    const byId = new Map();
    for (const c of constraints) {
      if (!COMMONSENSE.includes(c.id) && c.id !== "hard.budget" && !OPTIONAL.includes(c.id)) {
        throw new TaskError("unknown constraint id " + c.id);
      }
      byId.set(c.id, c.params);
    }
    for (const cid of [...COMMONSENSE, "hard.budget"]) {
      if (!byId.has(cid)) throw new TaskError("missing constraint " + cid);
    }
    const info = byId.get("commonsense.complete_information");
    const route = byId.get("commonsense.reasonable_city_route");
    const budget = byId.get("hard.budget");
    if (!/^[0-9]{4}-[0-9]{2}-[0-9]{2}$/.test(info.start_date)) throw new TaskError("bad start_date");
    this.start = info.start_date;
    this.days = info.days;
    this.origin = route.origin;
    this.destinationState = route.destination_state;
    this.destinationCity = route.destination_city ?? null;
    this.visitingCities = route.visiting_cities;
    this.people = budget.people;
    this.budget = budget.budget;
    const opt = (id, key, dflt) => (byId.has(id) ? byId.get(id)[key] ?? dflt : dflt);
    this.roomRule = opt("hard.room_rule", "rule", null);
    this.roomType = opt("hard.room_type", "room_type", null);
    this.cuisines = opt("hard.cuisine", "cuisines", []);
    this.excluded = opt("hard.transport", "excluded", []);
    this.minRating = opt("hard.accommodation_rating", "min_rating", null);
    this.tiered = byId.has("hard.tiered_dining") ? byId.get("hard.tiered_dining") : null;
  }
  date(day) {
    return addDays(this.start, day - 1);
  }
  checkIds() {
    const ids = [...COMMONSENSE, "hard.budget"];
    for (const [cid, present] of [
      ["hard.room_rule", this.roomRule !== null],
      ["hard.room_type", this.roomType !== null],
      ["hard.cuisine", this.cuisines.length > 0],
      ["hard.transport", this.excluded.length > 0],
      ["hard.accommodation_rating", this.minRating !== null],
      ["hard.tiered_dining", this.tiered !== null],
    ]) {
      if (present) ids.push(cid);
    }
    return ids;
  }
}

// ---- submission parsing (mirrors plan.rs) ----

function optStr(day, key) {
  const v = day[key] ?? null;
  if (v !== null && typeof v !== "string") throw new Malformed(key);
  return v;
}

const DAY_KEYS = ["day", "travel", "city", "breakfast", "lunch", "dinner", "attractions", "accommodation"];

/** null for an empty submission, a list of days for a plan; throws Malformed. */
function parsePlan(value) {
  if (value === null) return null;
  if (typeof value === "string") {
    let t = value.trim();
    for (const prefix of ["```json", "```"]) {
      if (t.startsWith(prefix)) {
        t = t.slice(prefix.length);
        break;
      }
    }
    if (t.endsWith("```")) t = t.slice(0, -3);
    t = t.trim();
    if (!t) return null;
    value = parseJson(t);
  }
  if (isObject(value) && keys(value).length === 0) return null;
  if (isObject(value) && keys(value).length === 1 && Array.isArray(value.days) && value.days.length === 0) {
    return null;
  }
  if (!isObject(value) || keys(value).length !== 1 || !("days" in value) || !Array.isArray(value.days)) {
    throw new Malformed("not a plan");
  }
  const days = [];
  for (const d of value.days) {
    if (!isObject(d) || !keys(d).every((k) => DAY_KEYS.includes(k)) || !("day" in d) || !("city" in d)) {
      throw new Malformed("day");
    }
    if (!isU32(d.day) || typeof d.city !== "string") throw new Malformed("day fields");
    const travel = d.travel ?? null;
    if (travel !== null) {
      const k = isObject(travel) ? keys(travel).sort() : [];
      if (k.join(",") !== "from,to,transport" || !k.every((x) => typeof travel[x] === "string")) {
        throw new Malformed("travel");
      }
    }
    const attractions = "attractions" in d ? d.attractions : [];
    if (!Array.isArray(attractions) || !attractions.every((a) => typeof a === "string")) {
      throw new Malformed("attractions");
    }
    days.push({
      day: d.day,
      travel,
      city: d.city,
      meals: [optStr(d, "breakfast"), optStr(d, "lunch"), optStr(d, "dinner")],
      attractions,
      accommodation: optStr(d, "accommodation"),
    });
  }
  if (days.length === 0) return null;
  // The schema's size limits.
  if (days.length > 31) throw new Malformed("too many days");
  for (const d of days) {
    if (d.day < 1 || d.day > 31 || d.attractions.length > 16) throw new Malformed("size");
    let strings = [d.city, d.accommodation, ...d.meals, ...d.attractions];
    if (d.travel) strings = strings.concat([d.travel.from, d.travel.to, d.travel.transport]);
    if (strings.some((s) => s !== null && utf8Length(s) > MAX_ID)) throw new Malformed("too long");
  }
  return days;
}

// ---- the checks (mirrors verify.rs) ----

function listing(items) {
  let s = items.slice(0, 3).join("; ");
  if (items.length > 3) s += "; and " + (items.length - 3) + " more";
  return s;
}

function check(id, problems, ok) {
  if (problems.length) return { id, status: "failed", reason: listing(problems) };
  return { id, status: "passed", reason: ok };
}

function touches(d, city) {
  const t = d.travel;
  return d.city === city || (t !== null && (t.from === city || t.to === city));
}

const mealsOf = (d) => d.meals.filter((m) => m !== null);
const ceilDiv = (a, b) => Math.ceil(a / b);
const f1 = (x) => x.toFixed(1);

function routeCost(route, people) {
  const cap = CAPACITY[route.mode];
  return route.price * (cap ? ceilDiv(people, cap) : people);
}

function planCost(w, people, days) {
  let total = 0;
  for (const d of days) {
    const r = d.travel ? w.route(d.travel.transport) : null;
    if (r) total += routeCost(r, people);
    for (const m of mealsOf(d)) {
      const x = w.restaurant(m);
      if (x) total += x.average_cost * people;
    }
    for (const a of d.attractions) {
      const x = w.attraction(a);
      if (x) total += x.ticket_price * people;
    }
    const h = d.accommodation !== null ? w.accommodation(d.accommodation) : null;
    if (h) total += h.nightly_price * ceilDiv(people, h.max_occupancy);
  }
  return total;
}

const roomTypeOk = (req, roomType) => (req === "not shared room" ? roomType !== "shared room" : roomType === req);

function verifyPlan(w, q, days) {
  const checks = [];
  const n = days.length;

  let bad = [];
  for (const d of days) {
    const k = d.day;
    if (w.city(d.city) === null) bad.push(`day ${k}: unknown city ${d.city}`);
    const t = d.travel;
    if (t !== null) {
      const r = w.route(t.transport);
      if (r === null) {
        bad.push(`day ${k}: unknown transport ${t.transport}`);
      } else {
        if (r.from !== t.from || r.to !== t.to) {
          bad.push(`day ${k}: ${r.id} runs ${r.from}\u2192${r.to}, not ${t.from}\u2192${t.to}`);
        }
        if (r.date != null && r.date !== q.date(k)) bad.push(`day ${k}: ${r.id} runs on ${r.date}, not ${q.date(k)}`);
      }
    }
    for (const m of mealsOf(d)) if (w.restaurant(m) === null) bad.push(`day ${k}: unknown restaurant ${m}`);
    for (const a of d.attractions) if (w.attraction(a) === null) bad.push(`day ${k}: unknown attraction ${a}`);
    const h = d.accommodation;
    if (h !== null && w.accommodation(h) === null) bad.push(`day ${k}: unknown accommodation ${h}`);
  }
  const sandboxOk = bad.length === 0;
  checks.push(check("commonsense.within_sandbox", bad, "every id exists and every route matches its day"));

  bad = [];
  if (n !== q.days) bad.push(`${n} days given, ${q.days} required`);
  days.forEach((d, i) => {
    const k = d.day;
    if (k !== i + 1) bad.push(`entry ${i + 1} is numbered day ${k}`);
    ["breakfast", "lunch", "dinner"].forEach((slot, j) => {
      if (d.meals[j] === null) bad.push(`day ${k}: no ${slot}`);
    });
    if (d.travel === null && d.attractions.length === 0) bad.push(`day ${k}: no attraction on a day without travel`);
    const last = i + 1 === n;
    const h = d.accommodation;
    if (h === null && !last) bad.push(`day ${k}: no accommodation`);
    else if (h !== null && last) bad.push(`day ${k}: accommodation ${h} booked on the last day`);
  });
  const completeOk = bad.length === 0;
  checks.push(check("commonsense.complete_information", bad, `${n} complete days`));

  bad = [];
  days.forEach((d, i) => {
    const k = d.day;
    const t = d.travel;
    if (t !== null) {
      if (t.to !== d.city) bad.push(`day ${k}: travels to ${t.to} but ends in ${d.city}`);
      if (i > 0 && t.from !== days[i - 1].city) {
        bad.push(`day ${k}: leaves from ${t.from} but day ${k - 1} ended in ${days[i - 1].city}`);
      }
    } else if (i > 0 && d.city !== days[i - 1].city) {
      bad.push(`day ${k}: ends in ${d.city} without travelling from ${days[i - 1].city}`);
    }
    for (const m of mealsOf(d)) {
      const r = w.restaurant(m);
      if (r !== null && !touches(d, r.city)) bad.push(`day ${k}: restaurant ${m} is in ${r.city}`);
    }
    for (const a of d.attractions) {
      const x = w.attraction(a);
      if (x !== null && !touches(d, x.city)) bad.push(`day ${k}: attraction ${a} is in ${x.city}`);
    }
    const h = d.accommodation !== null ? w.accommodation(d.accommodation) : null;
    if (h !== null && h.city !== d.city) {
      bad.push(`day ${k}: accommodation ${h.id} is in ${h.city}, the day ends in ${d.city}`);
    }
  });
  checks.push(check("commonsense.within_current_city", bad, "every venue lies in its day's cities"));

  bad = [];
  const first = days.length ? days[0].travel : null;
  if (first === null) bad.push("day 1 does not depart from the origin");
  else if (first.from !== q.origin) bad.push(`day 1 departs from ${first.from}, not the origin ${q.origin}`);
  if (!days.length) bad.push("no days");
  else if (!(days[n - 1].city === q.origin && days[n - 1].travel !== null)) {
    bad.push(`the last day ends in ${days[n - 1].city}, not back at the origin ${q.origin}`);
  }
  const visited = [];
  for (const d of days.slice(0, Math.max(n - 1, 0))) {
    if (d.city === q.origin) bad.push(`day ${d.day}: back at the origin before the last day`);
    else if (!visited.length || visited[visited.length - 1] !== d.city) {
      if (visited.includes(d.city)) bad.push(`day ${d.day}: revisits ${d.city}`);
      else visited.push(d.city);
    }
  }
  if (visited.length !== q.visitingCities) bad.push(`visits ${visited.length} cities, ${q.visitingCities} required`);
  for (const c of visited) {
    const city = w.city(c);
    if (city !== null) {
      if (city.state !== q.destinationState) bad.push(`${c} is in ${city.state}, not ${q.destinationState}`);
      else if (q.destinationCity !== null && q.destinationCity !== c) bad.push(`${c} is not the destination city`);
    }
  }
  checks.push(check("commonsense.reasonable_city_route", bad, "closed route through " + visited.join(", ")));

  for (const [cid, what, items] of [
    ["commonsense.diverse_restaurants", "restaurant", days.flatMap(mealsOf)],
    ["commonsense.diverse_attractions", "attraction", days.flatMap((d) => d.attractions)],
  ]) {
    const seen = new Set();
    const dup = [];
    for (const x of items) {
      if (seen.has(x)) dup.push(`${what} ${x} repeated`);
      seen.add(x);
    }
    checks.push(check(cid, dup, `${items.length} distinct ${what}s`));
  }

  const modes = [];
  for (const d of days) {
    const r = d.travel !== null ? w.route(d.travel.transport) : null;
    if (r !== null) modes.push(r.mode);
  }
  bad = [];
  for (const other of ["flight", "taxi"]) {
    if (modes.includes("self_driving") && modes.includes(other)) bad.push("self-driving combined with " + PHRASE[other]);
  }
  checks.push(check("commonsense.non_conflicting_transport", bad, "transport modes are compatible"));

  bad = [];
  let i = 0;
  while (i < n) {
    const h = days[i].accommodation;
    if (h === null) {
      i += 1;
      continue;
    }
    let j = i;
    while (j < n && days[j].accommodation === h) j += 1;
    const acc = w.accommodation(h);
    if (acc !== null && j - i < acc.min_nights) {
      bad.push(`${h}: ${j - i} nights from day ${i + 1}, minimum ${acc.min_nights}`);
    }
    i = j;
  }
  checks.push(check("commonsense.minimum_nights", bad, "every stay meets its minimum nights"));

  const hardIds = q.checkIds().filter((c) => c.startsWith("hard."));
  if (!(sandboxOk && completeOk)) {
    for (const id of hardIds) {
      checks.push({ id, status: "skipped", reason: "not evaluated: the plan is incomplete or names unknown ids" });
    }
    return checks;
  }
  const stays = days
    .filter((d) => d.accommodation !== null)
    .map((d) => w.accommodation(d.accommodation))
    .filter((h) => h !== null);
  const total = planCost(w, q.people, days);
  checks.push({
    id: "hard.budget",
    status: total <= q.budget ? "passed" : "failed",
    reason: `total cost $${total} against a budget of $${q.budget}`,
  });
  if (q.roomRule !== null) {
    bad = stays.filter((h) => h.forbids.includes(q.roomRule)).map((h) => `${h.id} forbids ${q.roomRule}`);
    checks.push(check("hard.room_rule", bad, "every stay allows " + q.roomRule));
  }
  if (q.roomType !== null) {
    bad = stays.filter((h) => !roomTypeOk(q.roomType, h.room_type)).map((h) => `${h.id} is a ${h.room_type}`);
    checks.push(check("hard.room_type", bad, "every stay is a " + q.roomType));
  }
  if (q.cuisines.length) {
    const served = days
      .flatMap(mealsOf)
      .map((m) => w.restaurant(m))
      .filter((r) => r !== null && r.city !== q.origin);
    bad = q.cuisines.filter((c) => !served.some((r) => r.cuisines.includes(c))).map((c) => `no ${c} meal`);
    checks.push(check("hard.cuisine", bad, q.cuisines.join(", ") + " all served"));
  }
  if (q.excluded.length) {
    bad = modes.filter((m) => q.excluded.includes(m)).map((m) => "uses " + PHRASE[m]);
    checks.push(check("hard.transport", bad, "no excluded transport"));
  }
  if (q.minRating !== null) {
    bad = stays.filter((h) => h.rating < q.minRating).map((h) => `${h.id} is rated ${f1(h.rating)}`);
    checks.push(check("hard.accommodation_rating", bad, "every stay rated at least " + f1(q.minRating)));
  }
  if (q.tiered !== null) checks.push(tieredCheck(w, q.tiered, days));
  return checks;
}

function tieredCheck(w, rule, days) {
  const id = "hard.tiered_dining";
  const dnum = rule.day;
  if (dnum < 1 || dnum > days.length) return { id, status: "failed", reason: `there is no day ${dnum}` };
  const day = days[dnum - 1];
  const h = day.accommodation !== null ? w.accommodation(day.accommodation) : null;
  if (h === null) return { id, status: "failed", reason: `day ${dnum} has no accommodation to set the tier` };
  const price = h.nightly_price;
  const tier = rule.tiers.find((t) => price >= t.min_price && (t.max_price == null || price < t.max_price));
  if (tier === undefined) return { id, status: "passed", reason: `$${price} per night falls in no tier` };
  const meals = mealsOf(day)
    .map((m) => w.restaurant(m))
    .filter((r) => r !== null);
  const bad = [];
  let cap = tier.max_meal_cost;
  if (cap != null) {
    const total = meals.reduce((s, r) => s + r.average_cost, 0);
    if (total >= cap) bad.push(`day ${dnum} meals cost $${total} per person, limit below $${cap}`);
  }
  const rated = meals.filter((r) => r.rating >= tier.min_rating).length;
  const ok = tier.quantifier === "all" ? rated === meals.length : rated >= 1;
  if (!ok) bad.push(`day ${dnum}: ${rated} of ${meals.length} restaurants rated at least ${f1(tier.min_rating)}`);
  cap = tier.max_ticket;
  if (cap != null) {
    for (const a of day.attractions) {
      const x = w.attraction(a);
      if (x !== null && x.ticket_price >= cap) bad.push(`day ${dnum}: ${x.id} costs $${x.ticket_price}, limit below $${cap}`);
    }
  }
  return check(id, bad, `day ${dnum} follows the $${tier.min_price}+ tier's rules`);
}

function verdict(taskId, checks, kind = null, error = null) {
  let passed = false;
  if (kind === null) {
    passed = checks.length > 0 && checks.every((c) => c.status === "passed");
    kind = passed ? "none" : "wrong_answer";
  }
  const v = { task_id: taskId, reward: passed ? 1.0 : 0.0, passed, failure_kind: kind, mask: false, checks };
  if (error !== null) v.error = error;
  return v;
}

function verifyTask(taskJson, submissionJson) {
  let w, q, taskId;
  try {
    const task = JSON.parse(taskJson);
    w = new World(task.world);
    q = new Query(task.constraints);
    taskId = task.id;
    if (typeof taskId !== "string") throw new TaskError("no task id");
  } catch (e) {
    // componentize-js turns a thrown value into the `err` case of the result.
    throw "the task record cannot be read: " + e.message;
  }
  const ids = q.checkIds();
  let days;
  try {
    days = parsePlan(parseJson(submissionJson));
  } catch (e) {
    if (!(e instanceof Malformed)) throw e;
    const reason = "the submission is not a plan in the required format";
    return verdict(taskId, ids.map((id) => ({ id, status: "skipped", reason })), "malformed_submission", e.message);
  }
  if (days === null) {
    const reason = "no plan was delivered";
    return verdict(taskId, ids.map((id) => ({ id, status: "skipped", reason })), "empty_submission", "the submission is empty");
  }
  return verdict(taskId, verifyPlan(w, q, days));
}

export function verify(task, submission) {
  return JSON.stringify(verifyTask(task, submission));
}
