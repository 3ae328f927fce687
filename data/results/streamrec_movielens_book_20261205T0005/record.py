"""Book-scale MovieLens table of chapter 13 (the chapter recomputes it at every build; this
record lets a smoke build show the book numbers). Same data, settings and seed as the
chapter's MovieLens cell at PRIVLAB_SCALE=book."""
import math, time, json
import numpy as np, pandas as pd
from privlab.config import get_scale, make_rng
from privlab.datasets import load_movielens
from privlab.experiments.movielens import prepare_movielens, run_movielens
from privlab.experiments.streamrec import random_recall
ratings = load_movielens()
catalogue = ratings[["movieId", "genres"]].drop_duplicates("movieId")
n = 671
t0 = time.perf_counter()
ml = prepare_movielens(ratings[ratings["userId"].between(1, n)], rng=make_rng(0),
                       catalogue=catalogue, max_user_id=n)
kw = dict(epsilons=(1, 3, 8, math.inf), epochs=3, batch_size=64, lr=2e-3, seed=0)
runs = {k: run_movielens(ml, model=k, **kw) for k in ("embedding", "features")}
sec = time.perf_counter() - t0
rows = [{"model": x["model"], "epsilon": f"{x['epsilon_target']:g}", "private parameters": x["n_parameters"],
         "sigma": x["sigma"], "C": x["max_grad_norm"], "clipped": x["fraction_clipped"],
         "loss first": x["train_loss"][0], "loss last": x["train_loss"][-1], "mean logit": x["mean_logit"],
         "auc": x["metrics"]["auc"], "recall@20": x["metrics"]["recall@20"],
         "ndcg@20": x["metrics"]["ndcg@20"], "steps": x["steps"]} for rs in runs.values() for x in rs]
pd.set_option("display.width", 200)
print(pd.DataFrame(rows).round(3).to_string())
print("random recall@20", round(random_recall(ml.cand_user, ml.cand_label, k=20), 3))
print("seconds (prepare + 8 runs)", round(sec, 1))
import subprocess, sys
from pathlib import Path
out = Path(__file__).parent
pd.DataFrame(rows).to_csv(out / "table.csv", index=False)
head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
(out / "meta.json").write_text(json.dumps({
    "scale": "book", "users": n, "random_recall@20": random_recall(ml.cand_user, ml.cand_label, k=20),
    "seconds": sec, "threads": 1, "commit": head, "command": "OMP_NUM_THREADS=1 PRIVLAB_SCALE=book "
    "python " + str(Path(__file__).relative_to(Path.cwd()))}, indent=1) + "\n")
