"""Rebuild the small trajectory slices in tests/data from the shared real data.

Run by hand (never by the tests): ``python tests/data/make_test_data.py /work/shared/data``.
It selects lines deterministically and transforms some records into the other
input shapes memp accepts; tests/data/README.md documents every file.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent

PREAMBLE = (
    "Interact with a household to solve a task. Each turn, answer with your thought and "
    "one action in the form 'Thought: ...' and 'Action: ...'."
)


def read(path: Path) -> list[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        return [(n, json.loads(line)) for n, line in enumerate(f, 1)]


def write(name: str, records: list[dict]) -> None:
    with open(OUT / name, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def pick_by_type(rows: list[tuple[int, dict]], ok: int, bad: int, total: int) -> list[tuple[int, dict]]:
    """Per task type the first ``ok`` successes and ``bad`` failures, topped up with failures."""
    count: dict[tuple[str, bool], int] = defaultdict(int)
    chosen: set[int] = set()
    for n, d in rows:
        key = (d["task_type"], bool(d["success"]))
        if count[key] < (ok if d["success"] else bad):
            count[key] += 1
            chosen.add(n)
    for n, d in rows:
        if len(chosen) >= total:
            break
        if not d["success"] and n not in chosen:
            chosen.add(n)
    return [(n, d) for n, d in rows if n in chosen]


def to_conversations(d: dict) -> dict:
    """AgentInstruct/ETO shape: preamble, canned OK, the task turn, then Action/Observation turns."""
    first = (d.get("initial_observation") or "").strip()
    task = d["task"]
    if first:
        head = f"Here is your task. {first}\nYour task is to: {task}"
    else:  # TextWorldExpress task texts already read "Your task is to ..."
        head = f"Here is your task. {task}" if "Your task is to" in task else f"Task: {task}"
    conv = [
        {"from": "human", "value": PREAMBLE},
        {"from": "gpt", "value": "OK"},
        {"from": "human", "value": head},
    ]
    for s in d["steps"]:
        conv.append({"from": "gpt", "value": f"Action: {s['action']}"})
        conv.append({"from": "human", "value": f"Observation: {s['observation']}"})
    return {"id": d["task_id"], "conversations": conv, "success": d["success"], "reward": d["reward"]}


def to_openai(d: dict) -> dict:
    """OpenAI chat shape: the first user turn is the initial observation (it holds the task)."""
    msgs = [
        {"role": "system", "content": "You are a shopping agent on WebShop."},
        {"role": "user", "content": d["initial_observation"]},
    ]
    for s in d["steps"]:
        msgs.append({"role": "assistant", "content": s["action"]})
        msgs.append({"role": "user", "content": s["observation"]})
    return {"task_id": d["task_id"], "messages": msgs, "success": d["success"], "reward": d["reward"]}


def to_memp(d: dict) -> dict:
    """Mem^p reference shape: {query, trajectory (ReAct-style text), reward}."""
    lines = []
    for s in d["steps"]:
        lines.append(f"Action: {s['action']}")
        lines.append(f"Observation: {s['observation']}")
    return {"query": d["task"], "trajectory": "\n".join(lines), "reward": d["reward"]}


def main(src: Path) -> None:
    train = read(src / "alfworld_train_replay.jsonl")
    picked = pick_by_type(train, ok=5, bad=1, total=40)
    write("alfworld_train.jsonl", [d for _, d in picked])
    print("alfworld_train.jsonl <- alfworld_train_replay.jsonl lines", [n for n, _ in picked])

    valid = read(src / "alfworld_valid_seen_replay.jsonl")
    vpicked = pick_by_type(valid, ok=2, bad=1, total=20)
    write("alfworld_valid_seen.jsonl", [d for _, d in vpicked])
    print("alfworld_valid_seen.jsonl <- alfworld_valid_seen_replay.jsonl lines", [n for n, _ in vpicked])

    # Mem^p shape: per task type the first valid_seen success not in the slice above (5 types).
    used = {n for n, _ in vpicked}
    first: dict[str, tuple[int, dict]] = {}
    for n, d in valid:
        if n not in used and d["success"] and d["task_type"] != "examine":
            first.setdefault(d["task_type"], (n, d))
    mpicked = sorted(first.values(), key=lambda nd: nd[0])[:5]
    write("memp_alfworld.jsonl", [to_memp(d) for _, d in mpicked])
    print("memp_alfworld.jsonl <- alfworld_valid_seen_replay.jsonl lines", [n for n, _ in mpicked])

    web = read(src / "webshop_react_fixed100_499.jsonl")
    write("webshop.jsonl", [d for _, d in web[:10]])
    print("webshop.jsonl <- webshop_react_fixed100_499.jsonl lines 1-10")
    write("openai_webshop.jsonl", [to_openai(d) for _, d in web[10:14] + web[15:16]])
    print("openai_webshop.jsonl <- webshop_react_fixed100_499.jsonl lines 11-14, 16")

    corpus = read(src / "alfworld_agentinstruct_corpus.jsonl")
    twx = read(src / "twx_train.jsonl")
    conv = [to_conversations(d) for _, d in corpus[:4]] + [to_conversations(twx[91][1])]
    write("conversations_agentinstruct.jsonl", conv)
    print("conversations_agentinstruct.jsonl <- alfworld_agentinstruct_corpus.jsonl lines 1-4, twx_train 92")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data"))
