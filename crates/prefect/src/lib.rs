//! A Prefect REST API client.
