"""B12: `helm template` of the chart: render time and object count per value set.

Renders `charts/openbatch` with the real Helm library (helm-python-sdk, the Helm v4 Go code
that `helm template` runs) for the default values and every `ci/*.yaml` combination, and
prints the median and best render time over `--repeat` renders, the number of objects and
the rendered size. Printed, not asserted: a chart that grows slow or huge shows up here.

    python -m bench.b12_chart [--repeat 20]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

from bench.common import REPO_ROOT  # noqa: F401  # puts the repository on sys.path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    import helm_python as helm

    from tests.chart.chart_support import CHART_DIR, NAMESPACE, RELEASE, parse, value_sets

    started = time.perf_counter()
    chart = helm.Chart.load(CHART_DIR)
    load_ms = (time.perf_counter() - started) * 1000
    print(f"Helm {helm.helm_sdk_version()} via helm-python-sdk {helm.__version__}")
    print(f"chart load: {load_ms:.1f} ms ({len(chart.templates)} templates)")
    print()
    print("| value set | objects | kinds | rendered KiB | median ms | best ms |")
    print("|---|---|---|---|---|---|")
    for name, values in value_sets().items():
        times: list[float] = []
        rendered: dict[str, str] = {}
        for _ in range(args.repeat):
            begin = time.perf_counter()
            rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
            times.append((time.perf_counter() - begin) * 1000)
        objects = parse(rendered)
        kinds = collections.Counter(o["kind"] for o in objects)
        size = sum(len(text) for text in rendered.values()) / 1024
        print(
            f"| {name} | {len(objects)} | {len(kinds)} | {size:.1f} | "
            f"{statistics.median(times):.1f} | {min(times):.1f} |"
        )
    print()
    begin = time.perf_counter()
    report = helm.lint(CHART_DIR, strict=True, namespace=NAMESPACE)
    print(f"helm lint (strict, defaults): {(time.perf_counter() - begin) * 1000:.1f} ms, ", end="")
    print(f"{len(report['errors'])} errors, {len(report['messages'])} messages")


if __name__ == "__main__":
    main()
