//! How a connection reaches a broker and is let in: the URL's transport (TCP, TLS, WebSockets),
//! the host as rumqttc wants it, the credentials, and what a refused connection means for the
//! user. The source and `tidegate bench` both connect through it, so a load test reaches a
//! broker exactly as tidegate does. It must never set session or flow-control options: those
//! are each client's own.

use rumqttc::{v5, Transport as RTransport};

use super::tls::{self, TlsError};
use crate::config::{BrokerAccess, Transport};

fn transport(a: &BrokerAccess) -> Result<RTransport, TlsError> {
    let rustls =
        || -> Result<_, TlsError> { Ok(rumqttc::TlsConfiguration::Rustls(tls::client_config(&a.tls)?)) };
    Ok(match a.broker.transport {
        Transport::Tcp => RTransport::Tcp,
        Transport::Ws => RTransport::Ws,
        Transport::Tls => RTransport::tls_with_config(rustls()?),
        Transport::Wss => RTransport::wss_with_config(rustls()?),
    })
}

fn host(a: &BrokerAccess) -> String {
    match a.broker.transport {
        // rumqttc takes the whole URL as the host for WebSockets and reads the port from it.
        Transport::Ws | Transport::Wss => a.broker.ws_url(),
        // rumqttc joins host and port with a `:`, so an IPv6 address needs its brackets. Not
        // for TLS: there the host is also the name the certificate is checked against, which
        // must be the bare address, and `::1:8883` still resolves (split at its last `:`).
        Transport::Tcp if a.broker.host.contains(':') => format!("[{}]", a.broker.host),
        _ => a.broker.host.clone(),
    }
}

/// The user name and password for CONNECT; a user name alone goes with an empty password.
fn credentials(a: &BrokerAccess) -> Option<(String, String)> {
    let user = a.username.clone()?;
    let password = a.password.as_ref().map(|p| p.expose().to_string());
    Some((user, password.unwrap_or_default()))
}

/// MQTT 3.1.1 options that reach the broker as `client_id`; the rest is the caller's.
pub fn v4_options(client_id: String, a: &BrokerAccess) -> Result<rumqttc::MqttOptions, TlsError> {
    let mut o = rumqttc::MqttOptions::new(client_id, host(a), a.broker.port);
    o.set_transport(transport(a)?);
    if let Some((user, password)) = credentials(a) {
        o.set_credentials(user, password);
    }
    Ok(o)
}

/// MQTT 5 options that reach the broker as `client_id`; the rest is the caller's.
pub fn v5_options(client_id: String, a: &BrokerAccess) -> Result<v5::MqttOptions, TlsError> {
    let mut o = v5::MqttOptions::new(client_id, host(a), a.broker.port);
    o.set_transport(transport(a)?);
    if let Some((user, password)) = credentials(a) {
        o.set_credentials(user, password);
    }
    Ok(o)
}

pub fn describe_v5(e: &v5::ConnectionError) -> String {
    match e {
        v5::ConnectionError::ConnectionRefused(code) => refused(code),
        v5::ConnectionError::Tls(t) => tls_failed(t),
        other => other.to_string(),
    }
}

pub fn describe_v4(e: &rumqttc::ConnectionError) -> String {
    match e {
        rumqttc::ConnectionError::ConnectionRefused(code) => refused(code),
        rumqttc::ConnectionError::Tls(t) => tls_failed(t),
        other => other.to_string(),
    }
}

fn refused(code: &impl std::fmt::Debug) -> String {
    format!("the broker refused the connection ({code:?}); check --username/--password and the client id")
}

fn tls_failed(e: &impl std::fmt::Display) -> String {
    format!("TLS failed: {e} (is the broker's CA trusted? see --ca-file)")
}
