//! Simulated sensors: temperature, humidity and battery drifting over time, a status string,
//! and now and then a malformed message — what a real fleet sends.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, MqttOptions, QoS};

struct Device {
    name: String,
    temp: f64,
    hum: f64,
    battery: f64,
}

pub async fn run(port: u16, count: usize, rate: f64) {
    let mut opts = MqttOptions::new("tidegate-demo-devices", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut fleet: Vec<Device> = (0..count)
        .map(|i| Device {
            name: format!("sensor-{:02}", i + 1),
            temp: rng.random_range(18.0..26.0),
            hum: rng.random_range(40.0..65.0),
            battery: rng.random_range(70.0..100.0),
        })
        .collect();
    let tick = Duration::from_secs_f64(1.0 / rate);
    let mut sent: u64 = 0;
    loop {
        for d in fleet.iter_mut() {
            d.temp = (d.temp + rng.random_range(-0.3..0.3)).clamp(-10.0, 45.0);
            d.hum = (d.hum + rng.random_range(-0.8..0.8)).clamp(5.0, 99.0);
            d.battery = (d.battery - rng.random_range(0.0..0.02)).max(0.0);
            sent += 1;
            let payload = if sent % 97 == 0 {
                // A device with a firmware bug: not JSON.
                format!("{{temp: {:.1}, oops", d.temp)
            } else {
                serde_json::json!({
                    "temp": (d.temp * 10.0).round() / 10.0,
                    "hum": (d.hum * 10.0).round() / 10.0,
                    "battery": (d.battery * 10.0).round() / 10.0,
                    "status": if d.battery < 20.0 { "low-battery" } else { "ok" },
                    "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                })
                .to_string()
            };
            let topic = format!("demo/sensors/{}/telemetry", d.name);
            let _ = client.publish(topic, QoS::AtLeastOnce, false, payload).await;
        }
        tokio::time::sleep(tick).await;
    }
}
