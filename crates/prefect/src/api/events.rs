//! The server's event stream (`/events/out` websocket) and event queries (`/events/filter`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::PrefectClient;
use crate::error::{PrefectError, one_line};
use crate::models::{Event, EventPage};

/// Which events to receive or query. Empty lists do not filter.
#[derive(Debug, Clone)]
pub struct EventFilter {
    /// Events that occurred at or after this time.
    pub since: DateTime<Utc>,
    /// ... and before this time. The stream sends nothing live unless this lies in the future.
    pub until: DateTime<Utc>,
    /// Exact event names, e.g. `prefect.flow-run.Scheduled`.
    pub event_names: Vec<String>,
    /// Event name prefixes, e.g. `prefect.flow-run.`.
    pub event_prefixes: Vec<String>,
    /// Resource ids, e.g. `prefect.flow-run.<id>`.
    pub resource_ids: Vec<String>,
    /// Ids of related resources, e.g. `prefect.work-pool.<id>`.
    pub related_ids: Vec<String>,
}

impl EventFilter {
    /// Events from now on, for a year (a live subscription).
    pub fn live() -> Self {
        let now = Utc::now();
        EventFilter {
            since: now,
            until: now + chrono::Duration::days(365),
            event_names: Vec::new(),
            event_prefixes: Vec::new(),
            resource_ids: Vec::new(),
            related_ids: Vec::new(),
        }
    }

    /// The filter as the server's `EventFilter` JSON (unknown keys would close the socket, so
    /// only documented ones are sent).
    pub fn to_json(&self, ascending: bool) -> Value {
        let mut f = json!({"occurred": {"since": self.since, "until": self.until}});
        let mut event = serde_json::Map::new();
        if !self.event_names.is_empty() {
            event.insert("name".into(), json!(self.event_names));
        }
        if !self.event_prefixes.is_empty() {
            event.insert("prefix".into(), json!(self.event_prefixes));
        }
        if !event.is_empty() {
            f["event"] = Value::Object(event);
        }
        if !self.resource_ids.is_empty() {
            f["resource"] = json!({"id": self.resource_ids});
        }
        if !self.related_ids.is_empty() {
            f["related"] = json!({"id": self.related_ids});
        }
        if ascending {
            f["order"] = json!("ASC");
        }
        f
    }
}

/// A live subscription to the server's events.
pub struct EventStream {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    url: String,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("url", &self.url)
            .finish()
    }
}

impl EventStream {
    /// The next event. `Ok(None)` when the server closed the stream cleanly; an error when the
    /// connection broke. The caller decides how long to wait (wrap in a timeout).
    pub async fn next(&mut self) -> Result<Option<Event>, PrefectError> {
        loop {
            let Some(msg) = self.ws.next().await else {
                return Ok(None);
            };
            match msg.map_err(|e| self.err(&e))? {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(text.as_str()).map_err(|e| self.err(&e))?;
                    if v.get("type").and_then(Value::as_str) != Some("event") {
                        continue;
                    }
                    let Some(event) = v.get("event").cloned() else {
                        continue;
                    };
                    let event: Event = serde_json::from_value(event).map_err(|e| self.err(&e))?;
                    return Ok(Some(event));
                }
                Message::Close(_) => return Ok(None),
                // Pings are answered by tungstenite itself; binary frames are not used.
                _ => continue,
            }
        }
    }

    /// Closes the stream politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    fn err(&self, e: &dyn std::fmt::Display) -> PrefectError {
        PrefectError::Events {
            url: self.url.clone(),
            detail: one_line(&e.to_string()),
        }
    }
}

impl PrefectClient {
    /// The websocket URL of the event stream.
    pub fn events_out_url(&self) -> String {
        let base = self.url("/events/out");
        if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base
        }
    }

    /// Subscribes to events matching `filter`. With `backfill` the server first replays stored
    /// matches since `filter.since` (at most about 15 minutes back). Connecting, authenticating
    /// and sending the filter must finish within `deadline`.
    pub async fn subscribe_events(
        &self,
        filter: &EventFilter,
        backfill: bool,
        deadline: Duration,
    ) -> Result<EventStream, PrefectError> {
        let url = self.events_out_url();
        let fail = |detail: String| PrefectError::Events {
            url: url.clone(),
            detail,
        };
        let setup = async {
            let mut req = url
                .as_str()
                .into_client_request()
                .map_err(|e| fail(one_line(&e.to_string())))?;
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("prefect"),
            );
            if let Some(auth) = &self.auth {
                req.headers_mut()
                    .insert(reqwest::header::AUTHORIZATION, auth.clone());
            }
            let (mut ws, _resp) = tokio_tungstenite::connect_async(req)
                .await
                .map_err(|e| fail(handshake_detail(&e)))?;
            // The auth frame carries the API key (Cloud) or the auth string (self-hosted).
            let token = self
                .config
                .api_key
                .as_ref()
                .or(self.config.auth_string.as_ref())
                .map(|s| s.expose_secret().to_string());
            let auth = json!({"type": "auth", "token": token}).to_string();
            ws.send(Message::text(auth))
                .await
                .map_err(|e| fail(one_line(&e.to_string())))?;
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v.get("type").and_then(Value::as_str) != Some("auth_success") {
                        return Err(fail(format!(
                            "authentication failed ({})",
                            v.get("reason")
                                .and_then(Value::as_str)
                                .unwrap_or("no reason given")
                        )));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Err(fail(
                        format!("the server closed the stream during authentication {reason}")
                            .trim()
                            .to_string(),
                    ));
                }
                Some(Ok(_)) => return Err(fail("unexpected answer to the auth frame".into())),
                Some(Err(e)) => return Err(fail(one_line(&e.to_string()))),
                None => {
                    return Err(fail(
                        "the server closed the stream during authentication".into(),
                    ));
                }
            }
            let filter_frame =
                json!({"type": "filter", "backfill": backfill, "filter": filter.to_json(false)})
                    .to_string();
            ws.send(Message::text(filter_frame))
                .await
                .map_err(|e| fail(one_line(&e.to_string())))?;
            Ok(ws)
        };
        let ws = tokio::time::timeout(deadline, setup)
            .await
            .map_err(|_| fail(format!("no connection within {} s", deadline.as_secs_f32())))??;
        Ok(EventStream { ws, url })
    }

    /// Stored events matching `filter`, oldest first, one page (at most 50).
    pub async fn filter_events(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<EventPage, PrefectError> {
        let body = json!({"filter": filter.to_json(true), "limit": limit.min(50)});
        self.post("/events/filter", &body, "events").await
    }

    /// The page after one returned by [`PrefectClient::filter_events`].
    pub async fn events_next_page(&self, next_page: &str) -> Result<EventPage, PrefectError> {
        // The server builds the link with a raw base64 token ('+', '/', '='): pass it on
        // percent-encoded, or '+' would arrive as a space.
        let token = next_page
            .split_once("page-token=")
            .map(|(_, t)| t.split('&').next().unwrap_or(t).to_string())
            .ok_or_else(|| PrefectError::Decode {
                what: "events".into(),
                detail: "the next-page link has no page token".into(),
            })?;
        self.json(
            Method::GET,
            "/events/filter/next",
            &[("page-token", token)],
            None,
            "events",
        )
        .await
    }
}

fn handshake_detail(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => format!(
            "the server refused the websocket ({}){}",
            resp.status(),
            if resp.status() == 401 || resp.status() == 403 {
                "; check PREFECT_API_KEY / PREFECT_API_AUTH_STRING"
            } else {
                ""
            }
        ),
        tungstenite::Error::Io(io) => format!("cannot connect ({io}); check PREFECT_API_URL"),
        other => one_line(&other.to_string()),
    }
}

impl PrefectClient {
    /// Emits events (`POST /events`, answered 204), as Prefect's client does when it has no
    /// websocket to `/events/in` (`prefect.events.clients.PrefectEventsClient`'s fallback).
    pub async fn emit_events(&self, events: &[Value]) -> Result<(), PrefectError> {
        self.no_content(
            Method::POST,
            "/events",
            Some(&Value::Array(events.to_vec())),
            "events",
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_sends_only_given_keys() {
        let mut f = EventFilter::live();
        f.event_names = vec!["prefect.flow-run.Scheduled".into()];
        f.related_ids = vec!["prefect.work-pool.x".into()];
        let v = f.to_json(false);
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["occurred", "event", "related"]);
        assert!(v["occurred"]["until"].is_string());
        assert_eq!(f.to_json(true)["order"], "ASC");
    }

    #[test]
    fn websocket_url_follows_scheme() {
        let c = PrefectClient::new(
            crate::PrefectConfig::for_url("https://h/api/accounts/a/workspaces/w").expect("url"),
        )
        .expect("client");
        assert_eq!(
            c.events_out_url(),
            "wss://h/api/accounts/a/workspaces/w/events/out"
        );
        let c = PrefectClient::new(
            crate::PrefectConfig::for_url("http://127.0.0.1:4200/api/").expect("url"),
        )
        .expect("client");
        assert_eq!(c.events_out_url(), "ws://127.0.0.1:4200/api/events/out");
    }
}
