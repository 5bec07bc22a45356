"""Run the README's trainer examples against a live `envsynth serve`, calling them the way verl
and TRL do, and its agent loop against the policy at POLICY_URL. Usage: readme_examples.py
README.md TASK_SET (ENVSYNTH_URL, ENVSYNTH_TOKEN and POLICY_URL set). Exits non-zero, saying what differed, when an example does not score as it must."""

import json
import os
import re
import sys

import requests

readme, task_set = sys.argv[1], sys.argv[2]
api = os.environ["ENVSYNTH_URL"]
text = open(readme, encoding="utf-8").read()
blocks = {m.group(1): m.group(0)[len("```python\n"):-3]
          for m in re.finditer(r"```python\n# envsynth-example: (\w+)\n.*?```", text, re.S)}
assert set(blocks) == {"verl", "trl", "agent"}, f"README examples found: {sorted(blocks)}"

verl, trl = {}, {}
exec(compile(blocks["verl"], "README.md (verl)", "exec"), verl)
exec(compile(blocks["trl"], "README.md (trl)", "exec"), trl)
agent = {}
exec(compile(blocks["agent"], "README.md (agent)", "exec"), agent)
checks = 0


def expect(got, want, what):
    global checks
    if got != want:
        sys.exit(f"{what}: got {got!r}, expected {want!r}")
    checks += 1


rows = trl["train_rows"](task_set, 4, seed=3)
expect(len(rows), 4, "train_rows count")
expect(rows == trl["train_rows"](task_set, 4, seed=3), True, "train_rows is reproducible")
expect(all(r["prompt"][0]["role"] in ("system", "user") for r in rows), True, "prompt rows")
ids = [r["task_id"] for r in rows]
planted = {i: json.dumps(requests.get(f"{api}/v1/tasks/{i}").json()["reference_solution"]) for i in ids}

# verl: compute_score(data_source, solution_str, ground_truth, extra_info) per response.
for i in ids:
    answer = f"Here is the itinerary.\n```json\n{planted[i]}\n```"
    expect(verl["compute_score"]("envsynth", answer, None, {"task_id": i}), 1.0, "verl planted")
    expect(verl["compute_score"]("envsynth", "I give up.", None, {"task_id": i}), 0.0, "verl empty")

# TRL: reward(completions, **columns) per group, text and conversational completions alike.
texts = [planted[ids[0]], "no plan", planted[ids[1]], "{}"]
group = [ids[0], ids[0], ids[1], ids[1]]
expect(trl["envsynth_reward"](completions=texts, task_id=group, prompts=[None] * 4), [1.0, 0.0, 1.0, 0.0],
       "trl text completions")
messages = [[{"role": "assistant", "content": t}] for t in texts]
expect(trl["envsynth_reward"](completions=messages, task_id=group), [1.0, 0.0, 1.0, 0.0],
       "trl conversational completions")

# The agent loop: the oracle policy looks the trip up with the task's tools, run by the server,
# then submits the plan; the answer passes, and every tool message is a result the agent reads.
for i in ids[:2]:
    messages = agent["play"](i)
    expect(agent["reward"](i, messages), 1.0, "agent loop with the oracle policy")
    results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
    expect(len(results) >= 2 and all(r["status"] == "ok" for r in results), True, f"agent tool results {results[:3]}")
    last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
    expect("submit_plan" in [c["function"]["name"] for c in messages[last]["tool_calls"]], True,
           "the episode ends at the submission")
    expect(agent["reward"](i, messages[:last]), 0.0, "the transcript before the submission")
bad = agent["env"].post(f"/v1/tasks/{ids[0]}/tools/no_such_tool", content="{}").json()
expect((bad["status"], bad["code"]), ("error", "unknown_tool"), "an unknown tool is the agent's error")

# Recording the group's results needs the token.
rollouts = [{"rollout_id": f"readme-{k}", "task_id": t, "policy": "readme", "sample_seed": k, "response": c}
            for k, (c, t) in enumerate(zip(texts, group))]
r = requests.post(f"{api}/v1/rollouts", json={"rollouts": rollouts})
expect(r.status_code, 401, "rollouts without the token")
auth = {"Authorization": f"Bearer {os.environ['ENVSYNTH_TOKEN']}"}
r = requests.post(f"{api}/v1/rollouts", json={"rollouts": rollouts}, headers=auth)
expect((r.status_code, r.json()["created"]), (200, 4), "rollouts recorded")
d = requests.get(f"{api}/v1/tasks/{ids[0]}/difficulty", params={"policy": "readme", "k": "1,2"}).json()
expect(d["policies"][0]["pass_at"], {"1": 0.5, "2": 1.0}, "pass@k of the recorded group")
print(f"ok: {checks} checks")
