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
assert set(blocks) == {"verl", "trl", "agent", "curriculum", "mcp"}, f"README examples found: {sorted(blocks)}"

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
# MCP: the official SDK client replays the oracle's tool calls and reads the same tool messages.
mcp_example = {}
exec(compile(blocks["mcp"], "README.md (mcp)", "exec"), mcp_example)
import asyncio
from mcp import Client

task = requests.get(f"{api}/v1/tasks/{ids[0]}").json()
transcript = agent["play"](ids[0])
answers = {m["tool_call_id"]: m["content"] for m in transcript if m["role"] == "tool"}
calls = [c for m in transcript for c in m.get("tool_calls") or []][:3]
expect(len(calls), 3, "the oracle's first tool calls")
for c in calls:
    instructions, names, text, is_error, structured = asyncio.run(
        mcp_example["call_tool"](ids[0], c["function"]["name"], json.loads(c["function"]["arguments"])))
    expect(text, answers[c["id"]], f"MCP tool message of {c['function']['name']}")
    expect(is_error, json.loads(text)["status"] == "error", "MCP isError")
    expect(structured, None if is_error else json.loads(text), "MCP structured content")
expect(names, [t["name"] for t in task["tools"]], "MCP tools/list")
expect(all(p["content"] in instructions for p in task["prompt"]), True, "MCP instructions are the prompt")
_, _, text, is_error, _ = asyncio.run(mcp_example["call_tool"](ids[0], task["tools"][0]["name"], {"bogus": 1}))
expect((is_error, json.loads(text)["status"]), (True, "error"), "an MCP call with bad arguments")


async def legacy_ping():
    async with Client(f"{api}/v1/tasks/{ids[0]}/mcp", mode="legacy") as client:
        await client.send_ping()
        return client.server_info.name


expect(asyncio.run(legacy_ping()), "envsynth", "the MCP initialize handshake alone")
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

# The curriculum: compute_score records as it scores; the sampler draws each batch from the
# registry, as verl's dataloader asks it for indices.
os.environ["ENVSYNTH_RUN"] = "readme-run"
curriculum = {}
exec(compile(blocks["curriculum"], "README.md (curriculum)", "exec"), curriculum)
train = requests.get(f"{api}/v1/tasks", params={"set": task_set, "split": "train", "limit": 1000}).json()["task_ids"]
expect(len(train) >= 4, True, "a train split to draw from")


class Dataset:  # what the sampler reads of verl's RLHFDataset
    dataframe = {"extra_info": [{"task_id": i, "index": k} for k, i in enumerate(train)]}


config = {"train_batch_size": 2, "seed": 5}
sampler = curriculum["CurriculumSampler"](Dataset(), config)
epoch = list(sampler)
expect(len(epoch), len(train) // 2 * 2, "one epoch's indices")
expect(all(0 <= k < len(train) for k in epoch), True, "indices into the dataset")
expect(all(epoch[j] != epoch[j + 1] for j in range(0, len(epoch), 2)), True, "distinct tasks in a batch")
expect(list(curriculum["CurriculumSampler"](Dataset(), config)), epoch, "the same seed, the same epoch")
# A group on the first task, half passed; then the sampler's draws carry the recorded outcomes.
first = train[0]
answer = json.dumps(requests.get(f"{api}/v1/tasks/{first}").json()["reference_solution"])
scores = [curriculum["compute_score"]("envsynth", answer if g % 2 else "no plan", None, {"task_id": first})
          for g in range(8)]
expect(scores, [0.0, 1.0] * 4, "compute_score verifies")
d = requests.get(f"{api}/v1/tasks/{first}/difficulty", params={"policy": "readme-run"}).json()
expect((d["policies"][0]["attempts"], d["policies"][0]["passes"]), (8, 4), "compute_score records")
draw = requests.post(f"{api}/v1/tasks/sample", json={"filter": {"set": task_set, "split": "train"}, "seed": 1,
                     "n": len(train), "curriculum": {"policy": "readme-run"}}).json()
weight = dict(zip(draw["task_ids"], draw["curriculum"]["mixed"]))
expect(draw["curriculum"]["tried"], 1, "the curriculum sees the recorded group")
expect(weight[first] > 0.95 and all(abs(w - 7 / 9) < 1e-9 for t, w in weight.items() if t != first), True,
       f"a half-passed task outweighs untried ones: {weight}")
print(f"ok: {checks} checks")
