"""Embed a small corpus with rationales and search it.

    python examples/encode_and_search.py [--model smollm2-135m] [--max-new-tokens 32]
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from grace_trl.encoder import GRACEEncoder

DOCS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The stock market fell sharply after the interest rate announcement.",
    "A violin is a string instrument played with a bow.",
]
QUERIES = ["How do plants make energy from sunlight?", "famous landmark in France"]

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--max-new-tokens", type=int, default=32)
parser.add_argument("--cache-dir", default=".grace_rationale_cache")
args = parser.parse_args()

encoder = GRACEEncoder.from_pretrained(args.model, cache_dir=args.cache_dir)  # reads grace_config.json if present
doc_vecs, doc_rats = encoder.encode(DOCS, max_new_tokens=args.max_new_tokens, return_rationales=True)
query_vecs, query_rats = encoder.encode(QUERIES, max_new_tokens=args.max_new_tokens, return_rationales=True)
scores = query_vecs @ doc_vecs.T  # embeddings are L2-normalised: dot product = cosine
for q, (query, rat) in enumerate(zip(QUERIES, query_rats)):
    best = scores[q].argmax()
    print(f"query: {query}\n  rationale: {rat.text!r}{' [truncated]' if rat.truncated else ''}")
    print(f"  best match ({scores[q, best]:.3f}): {DOCS[best]}\n  its rationale: {doc_rats[best].text!r}\n")
