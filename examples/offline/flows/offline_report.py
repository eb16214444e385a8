"""A flow that needs no internet, for the local demo.

It makes up a deterministic weather report for a city (the same city always gives the same
numbers), logs it, and publishes it as a markdown table artifact. `fail=True` makes it raise,
to show a failed run end to end.
"""

import hashlib

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

CONDITIONS = ["sunny", "cloudy", "rain", "wind", "fog", "snow"]


@task
def synthesize(city: str, days: int) -> list[dict]:
    """One row per day, derived from a hash of the city name and the day number."""
    rows = []
    for day in range(days):
        digest = hashlib.sha256(f"{city}:{day}".encode()).digest()
        low = digest[0] % 25 - 5
        rows.append(
            {
                "day": day + 1,
                "low": low,
                "high": low + 3 + digest[1] % 10,
                "condition": CONDITIONS[digest[2] % len(CONDITIONS)],
            }
        )
    return rows


@task
def publish(city: str, rows: list[dict]) -> str:
    """The rows as a markdown table, saved as the `offline-report` artifact."""
    lines = [
        f"# Synthetic weather for {city}",
        "",
        "| Day | Low (°C) | High (°C) | Condition |",
        "|----:|---------:|----------:|:----------|",
    ]
    lines += [
        f"| {r['day']} | {r['low']} | {r['high']} | {r['condition']} |" for r in rows
    ]
    markdown = "\n".join(lines) + "\n"
    create_markdown_artifact(
        key="offline-report",
        markdown=markdown,
        description=f"Synthetic {len(rows)}-day report for {city}",
    )
    return markdown


@flow(name="offline-report", log_prints=True)
def offline_report(city: str = "Springfield", days: int = 3, fail: bool = False) -> dict:
    """Report on `city` for `days` days; raise when `fail` is true."""
    logger = get_run_logger()
    if days < 1 or days > 14:
        raise ValueError(f"days must be between 1 and 14, got {days}")
    rows = synthesize(city, days)
    for r in rows:
        logger.info("%s day %d: %d..%d °C, %s", city, r["day"], r["low"], r["high"], r["condition"])
    publish(city, rows)
    if fail:
        raise RuntimeError(f"failing on purpose for {city} (fail=True)")
    return {"city": city, "days": days, "warmest": max(r["high"] for r in rows)}


if __name__ == "__main__":
    print(offline_report())
