//! The demo's embedded MQTT broker (rumqttd, MQTT 3.1.1) on a loopback port.

use std::net::TcpListener;

/// Starts the broker on its own threads; returns its port once it accepts connections.
pub fn start(port: Option<u16>) -> anyhow::Result<u16> {
    let port = match port {
        Some(p) => p,
        None => TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
    };
    let config = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "demo"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 500
    dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&config)?;
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded broker stopped");
            }
        })?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    anyhow::bail!("the embedded broker did not start on port {port} (is it taken? use --broker-port)")
}
