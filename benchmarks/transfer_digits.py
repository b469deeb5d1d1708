"""Transfer learning vs training from scratch on real digits, offline.

LeNet-5 trained on digits 0-4, moved to digits 5-9 with 20 labelled images per class,
against the same network from scratch (see kvision/testing/transfer_digits.py for
the protocol). Prints a Markdown table: accuracy on the 225 held-out 5-9 digits for
each of five random subsets, trainable parameters and seconds per epoch, all measured
side by side in this run.

    python benchmarks/transfer_digits.py [--seeds 5] [--per-class 20]
"""

import argparse

from kvision.testing import transfer_digits


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    pretrained = transfer_digits.pretrain()
    rows = transfer_digits.compare(pretrained, seeds=range(args.seeds),
                                   per_class=args.per_class, epochs=args.epochs)
    print(transfer_digits.format_rows(rows, args.per_class))
    by_name = {r.variant: r for r in rows}
    gains = [t - s for t, s in zip(by_name["transfer"].accuracies,
                                   by_name["scratch"].accuracies)]
    print(f"\ntransfer - scratch: {', '.join(f'{g * 100:+.1f}' for g in gains)} points "
          f"(mean {sum(gains) / len(gains) * 100:+.1f})")


if __name__ == "__main__":
    main()
