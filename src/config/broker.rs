//! Broker addresses and topic filters: parsing and validation only, no network.

use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }
}

/// A validated broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
    /// Path for WebSocket transports (e.g. `/mqtt`).
    pub path: String,
}

impl BrokerUrl {
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::new("broker", format!("`{input}` {why}"));
        let (scheme, rest) = input.split_once("://").ok_or_else(|| {
            bad("has no scheme; write mqtt://host:1883, mqtts://host:8883, ws://… or wss://…")
        })?;
        let (transport, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => (Transport::Tcp, 1883),
            "mqtts" | "ssl" | "tls" => (Transport::Tls, 8883),
            "ws" => (Transport::Ws, 80),
            "wss" => (Transport::Wss, 443),
            other => {
                return Err(bad(&format!(
                    "has unknown scheme `{other}`; use mqtt, mqtts, ws or wss"
                )))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad(
                "contains credentials; pass --username and --password instead",
            ));
        }
        // `host`, `host:port`, `[IPv6]` or `[IPv6]:port`; a bare IPv6 address would be
        // ambiguous with its port.
        let (host, port) = match authority.strip_prefix('[') {
            Some(rest) => {
                let (h, after) = rest
                    .split_once(']')
                    .ok_or_else(|| bad("has an unclosed `[` in its host"))?;
                let port = match after {
                    "" => None,
                    p => Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| bad("has text after `]`; write [IPv6]:port"))?,
                    ),
                };
                (h, port)
            }
            None => match authority.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(bad(
                        "has more than one `:` in host:port; write an IPv6 address as [IPv6]:port",
                    ))
                }
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(0) => return Err(bad("has port 0")),
                Ok(port) => port,
                Err(_) => return Err(bad(&format!("has an invalid port `{p}`"))),
            },
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("has spaces or control characters in the host"));
        }
        let path = match transport {
            Transport::Ws | Transport::Wss if path.is_empty() => "/mqtt".to_string(),
            Transport::Ws | Transport::Wss => path.to_string(),
            _ if path.is_empty() || path == "/" => String::new(),
            _ => return Err(bad("has a path; only ws:// and wss:// URLs take one")),
        };
        Ok(BrokerUrl {
            transport,
            host: host.to_string(),
            port,
            path,
        })
    }

    /// The seed script's `BROKER_ADDR` is a bare host name with TLS, on port 8883 unless it
    /// names one (`host:8883`); a full URL is taken as it is.
    pub fn from_seed_host(host: &str) -> Result<Self, ConfigError> {
        if host.contains("://") {
            Self::parse(host)
        } else {
            Self::parse(&format!("mqtts://{host}"))
        }
    }

    /// `host:port`, with an IPv6 address in brackets.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL WebSocket transports connect to.
    pub fn ws_url(&self) -> String {
        let scheme = if self.transport == Transport::Wss {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.transport {
            Transport::Tcp => "mqtt",
            Transport::Tls => "mqtts",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// Checks an MQTT topic filter (MQTT 5 §4.7): `#` only as the whole last level, `+` only as a
/// whole level, no NUL, at most 65535 bytes.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter cannot be empty".into());
    }
    if filter.len() > 65_535 {
        return Err("a topic filter is at most 65535 bytes".into());
    }
    if filter.contains('\0') {
        return Err("a topic filter cannot contain NUL".into());
    }
    if let Some(shared) = filter.strip_prefix("$share/") {
        // MQTT 5 §4.8.2: `$share/{ShareName}/{filter}`, the name without wildcards.
        return match shared.split_once('/') {
            Some((group, inner)) if !group.is_empty() && !group.contains(['+', '#']) => {
                validate_filter(inner).map_err(|e| format!("`{filter}`: {e}"))
            }
            _ => Err(format!(
                "`{filter}` is not a shared subscription: write $share/GROUP/FILTER (or use --share-group)"
            )),
        };
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(format!("`{filter}`: `#` must be a whole level and the last one"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`{filter}`: `+` must be a whole level"));
        }
    }
    Ok(())
}

/// Checks a topic name a message is published to: no wildcards, no NUL, not empty.
pub fn validate_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("topic cannot be empty".into());
    }
    if topic.len() > 65_535 {
        return Err("topic is at most 65535 bytes".into());
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "topic `{topic}` contains a wildcard (+ or #); wildcards are for filters only"
        ));
    }
    if topic.contains('\0') {
        return Err("topic cannot contain NUL".into());
    }
    Ok(())
}

/// Does `topic` match `filter`? (`$`-topics are not matched by a leading wildcard, per MQTT.)
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = BrokerUrl::parse("mqtts://abc.hivemq.cloud").unwrap();
        assert_eq!((u.transport, u.port), (Transport::Tls, 8883));
        let u = BrokerUrl::parse("wss://abc.hivemq.cloud:8884/mqtt").unwrap();
        assert_eq!(u.ws_url(), "wss://abc.hivemq.cloud:8884/mqtt");
        assert_eq!(BrokerUrl::parse("mqtt://h").unwrap().port, 1883);
        for (seed, url) in [
            ("x.y", "mqtts://x.y:8883"),
            // The port in the seed's host form, as a course's .env might give it.
            ("x.y:8884", "mqtts://x.y:8884"),
            ("[::1]:8883", "mqtts://[::1]:8883"),
            ("mqtt://x.y", "mqtt://x.y:1883"),
        ] {
            assert_eq!(BrokerUrl::from_seed_host(seed).unwrap().to_string(), url);
        }
        let v6 = BrokerUrl::parse("ws://[::1]/mqtt").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 80));
        assert_eq!(v6.ws_url(), "ws://[::1]:80/mqtt");
        for bad in [
            "h:1883",
            "http://h",
            "mqtt://h:99999",
            "mqtt://h:0",
            "mqtt://h:",
            "mqtt://:1883",
            "mqtt://u:p@h",
            "mqtt://h/x",
            "mqtt://h:1:2",
            "mqtt://::1",
            "mqtt://[::1",
            "mqtt://[::1]x",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters() {
        for ok in ["#", "a/+/c", "a/#", "+", "$share/g/a/#"] {
            validate_filter(ok).unwrap();
        }
        for bad in [
            "",
            "a/#/b",
            "a#",
            "a/b+",
            "x\0",
            "$share/g",
            "$share/g/",
            "$share//a",
            "$share/+/a",
            "$share/g/a/#/b",
        ] {
            assert!(validate_filter(bad).is_err(), "{bad:?}");
        }
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("#", "x/y"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(!filter_matches("#", "$SYS/x"));
    }
}
