"""``grace-trl explain``: show the rationale behind each embedding and how texts relate.

    grace-trl explain --model M "query" "doc 1" "doc 2"      # rationales + cosine of each doc to the query
    grace-trl explain --model M --corpus docs.txt "query"     # + nearest neighbours in a corpus (one text a line)
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from ..cli_args import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="grace-trl explain", description="Print rationales, similarities and neighbours.")
    p.add_argument("texts", nargs="+", help="QUERY [DOC ...]: the first text is compared with the others.")
    p.add_argument("--model", required=True, help="GRACE checkpoint, causal LM, Hub id or alias (smollm2-135m).")
    p.add_argument("--corpus", help="Text file, one document per line: print each text's nearest neighbours.")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cache-dir", default=None, help="Rationale cache folder (reused across runs).")
    p.add_argument("--device", default=None)
    p.add_argument("--no-rationale", action="store_true", help="Embed the prompt only (no rationale).")
    return p


def _read_corpus(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--corpus {path}: no such file")
    docs = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not docs:
        raise ValueError(f"--corpus {path}: no non-empty lines")
    return docs


def main(argv: list[str] | None = None) -> int:
    from ..encoder import GRACEEncoder

    args = build_parser().parse_args(argv)
    corpus = _read_corpus(args.corpus) if args.corpus else []
    encoder = GRACEEncoder.from_pretrained(args.model, device=args.device, cache_dir=args.cache_dir)
    use_rationale = not args.no_rationale
    vecs, rats = encoder.encode(args.texts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                use_rationale=use_rationale, return_rationales=True)
    wrap = textwrap.TextWrapper(width=100, initial_indent="    ", subsequent_indent="    ")
    for i, (text, rat) in enumerate(zip(args.texts, rats)):
        print(f"[{i}] {text}")
        if use_rationale:
            flag = " (truncated: no EOS within max_new_tokens)" if rat.truncated else ""
            print(f"  rationale ({len(rat.token_ids)} tokens){flag}:")
            print(wrap.fill(rat.text.strip() or "<empty>"))
        print()
    if len(args.texts) > 1:
        sims = vecs[1:] @ vecs[0]
        print(f"cosine similarity to [0] {args.texts[0]!r}:")
        for j in sorted(range(len(sims)), key=lambda j: -sims[j]):
            print(f"  {sims[j]:+.4f}  [{j + 1}] {args.texts[j + 1]}")
        print()
    if corpus:
        doc_vecs = encoder.encode(corpus, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                  use_rationale=use_rationale)
        scores = vecs @ doc_vecs.T
        k = min(args.top_k, len(corpus))
        for i, text in enumerate(args.texts):
            print(f"nearest neighbours of [{i}] {text!r}:")
            for j in scores[i].argsort()[::-1][:k]:
                print(f"  {scores[i, j]:+.4f}  {corpus[j]}")
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
