//! The publishing side of `tidegate bench`: several rumqttc connections, each with its share of
//! the sequence numbers, optionally paced.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};

use crate::{config::BrokerAccess, source::reach};

pub async fn run(
    broker: BrokerAccess,
    topic: String,
    total: u64,
    rate: Option<u64>,
    size: usize,
    qos: u8,
    connections: usize,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for c in 0..connections as u64 {
        let (broker, topic) = (broker.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let client_id = format!("tidegate-bench-pub-{}-{c}", rand::random::<u32>());
            let mut opts = reach::v4_options(client_id, &broker)?;
            opts.set_keep_alive(Duration::from_secs(30)).set_inflight(1000);
            let (client, mut eventloop) = AsyncClient::new(opts, 1000);
            let q = if qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            // This connection's share of the sequence numbers: c, c + connections, …
            let mine = (c..total).step_by(connections);
            let expected = total.saturating_sub(c).div_ceil(connections as u64);
            let per_conn_rate = rate.map(|r| (r as f64 / connections as f64).max(0.001));
            let sender = tokio::spawn(async move {
                let start = Instant::now();
                for (i, seq) in mine.into_iter().enumerate() {
                    if let Some(r) = per_conn_rate {
                        let due = start + Duration::from_secs_f64(i as f64 / r);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let head = format!("{{\"seq\":{seq},\"sent_us\":{},\"pad\":\"", super::now_us());
                    let pad = size.saturating_sub(head.len() + 2);
                    let payload = format!("{head}{}\"}}", "x".repeat(pad));
                    if client.publish(&topic, q, false, payload).await.is_err() {
                        break;
                    }
                }
                client
            });
            // Drive the connection until every publish is acknowledged (or sent, for QoS 0).
            let mut done = 0u64;
            while done < expected {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) if qos == 1 => done += 1,
                    Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == 0 => done += 1,
                    Ok(_) => {}
                    Err(e) => anyhow::bail!(
                        "publishing to {} failed: {}",
                        broker.broker,
                        reach::describe_v4(&e)
                    ),
                }
            }
            let client = sender.await?;
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
