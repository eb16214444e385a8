"""The weather flow of Prefect's Google Cloud Run worker guide.

Fetches hourly temperatures for a place from Open-Meteo (needs internet) and publishes a
small markdown report as an artifact.
"""

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

OPEN_METEO_URL = "https://api.open-meteo.com/v1/forecast"


@task(retries=2, retry_delay_seconds=5)
def get_temperatures(lat: float, lon: float) -> list[float]:
    """Hourly 2 m temperatures (degrees C) for the coming days, first hour first."""
    response = httpx.get(
        OPEN_METEO_URL,
        params={"latitude": lat, "longitude": lon, "hourly": "temperature_2m"},
        timeout=30,
    )
    response.raise_for_status()
    return [float(t) for t in response.json()["hourly"]["temperature_2m"]]


@task
def publish_report(lat: float, lon: float, temperatures: list[float]) -> str:
    """A markdown table of the next few hours, saved as the `weather-report` artifact."""
    rows = "\n".join(
        f"| +{hour} h | {temp:.1f} |" for hour, temp in enumerate(temperatures[:6])
    )
    report = (
        f"# Weather report for ({lat}, {lon})\n\n"
        "| When | Temperature (°C) |\n"
        "|:-----|-----------------:|\n"
        f"{rows}\n"
    )
    create_markdown_artifact(
        key="weather-report",
        markdown=report,
        description="Hourly temperatures from Open-Meteo",
    )
    return report


@flow(name="fetch-weather", log_prints=True)
def fetch_weather(lat: float = 38.9, lon: float = -77.0) -> float:
    """Fetch the forecast, report it, and return the current temperature."""
    temperatures = get_temperatures(lat, lon)
    publish_report(lat, lon, temperatures)
    get_run_logger().info("Temperature now at (%s, %s): %.1f °C", lat, lon, temperatures[0])
    return temperatures[0]


if __name__ == "__main__":
    fetch_weather(14.5994, 28.6731)
