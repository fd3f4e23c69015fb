"""lm-eval's `local-chat-completions` backend, run as r1lab/eval/README.md documents it, against a real
OpenAI-compatible server on 127.0.0.1 (the test server of test_eval_endpoint; pointing it at `r1lab serve` comes
with the server issue).

lm-eval is heavy (datasets, pyarrow, scikit-learn) and not a dependency of r1lab, so this runs only where an
`lm_eval` executable is found: on PATH, or named by R1LAB_LM_EVAL (for example a separate virtualenv made with
`pip install "lm-eval[api]"`, which needs no torch).
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_eval_endpoint import serve, stop

LM_EVAL = os.environ.get("R1LAB_LM_EVAL") or shutil.which("lm_eval")
README = Path(__file__).parents[1] / "r1lab" / "eval" / "README.md"

pytestmark = pytest.mark.skipif(not LM_EVAL, reason="lm-eval is not installed (set R1LAB_LM_EVAL to its lm_eval)")


def documented_task_yaml() -> str:
    text = README.read_text()
    return re.search(r"```yaml\n(.*?)```", text, re.DOTALL).group(1)


def test_lm_eval_chat_completions_with_the_documented_offline_task(tmp_path):
    data = tmp_path / "gsm8k_test.jsonl"
    rows = [("What is 2 + 3?", "5"), ("What is 7 * 6?", "42"), ("What is 10 - 4?", "6")]
    data.write_text("".join(json.dumps({"question": q, "answer": f"steps\n#### {a}"}) + "\n" for q, a in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "my_gsm8k.yaml").write_text(documented_task_yaml().replace("/path/to/gsm8k_test.jsonl", str(data)))
    replies = {"What is 2 + 3?": "5", "What is 7 * 6?": "42", "What is 10 - 4?": "7"}  # the last one is wrong

    def answer(prompt, body):
        return {"content": "So the answer is \\boxed{" + replies[prompt.splitlines()[0]] + "}."}

    server = serve(answer)
    model_args = (f"model=tiny-r1,base_url={server.url}/chat/completions,num_concurrent=2,max_retries=3,"
                  "tokenized_requests=False")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run([LM_EVAL, "--model", "local-chat-completions", "--model_args", model_args,
                               "--apply_chat_template", "--include_path", str(tasks), "--tasks", "my_gsm8k",
                               "--gen_kwargs", "temperature=0.6,top_p=0.95,max_gen_toks=256",
                               "--output_path", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    finally:
        stop(server)
    assert done.returncode == 0, done.stderr[-2000:]
    results = next((tmp_path / "out").rglob("results_*.json"))
    score = json.loads(results.read_text())["results"]["my_gsm8k"]["exact_match,boxed"]
    assert score == pytest.approx(2 / 3)
    assert all(body["messages"][-1]["role"] == "user" for body in server.bodies)
