#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Benchmark: N real whatsapp-rust clients paired and connected to the
//! simulator through the in-process transport.
//!
//! Reports the time to pair + connect all of them, resident memory per
//! connected client, and 1:1 round trips per second between linked clients.
//!
//!     cargo bench -p wagate-sim --bench network            # N = 1000
//!     BENCH_CLIENTS=200 BENCH_ROUNDS=5 cargo bench -p wagate-sim --bench network

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wagate_sim::{SimClient, Simulator};
use whatsapp_rust::Jid;
use whatsapp_rust::waproto::whatsapp as wa;

const WAIT: Duration = Duration::from_secs(120);

#[path = "../../benches/support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{CountingAlloc, live_kib};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size of this process in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn link(sim: Simulator, phone: String) -> SimClient {
    let c = SimClient::start_unpaired(&sim).await.unwrap();
    let qr = c.wait_qr(0, WAIT).await.unwrap();
    sim.scan_qr(&qr, &phone).await.unwrap();
    c.wait_connected(0, WAIT).await.unwrap();
    c
}

async fn wait_text(c: &SimClient, from: usize, body: String) {
    c.wait_text(from, WAIT, &body).await.unwrap();
}

fn main() {
    let n = env("BENCH_CLIENTS", 1000);
    let rounds = env("BENCH_ROUNDS", 5);
    let pairs = env("BENCH_PAIRS", 100).min(n / 2);
    let concurrency = env("BENCH_CONCURRENCY", 64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let sim = Simulator::new();
        let rss_before = rss_kib();
        let heap_before = live_kib();

        // 1. Pair and connect N clients, `concurrency` pairings in flight.
        let started = Instant::now();
        let gate = Arc::new(Semaphore::new(concurrency));
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let sim = sim.clone();
                let gate = gate.clone();
                tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.unwrap();
                    let t = Instant::now();
                    let c = link(sim, format!("1555{i:07}")).await;
                    (c, t.elapsed())
                })
            })
            .collect();
        let mut clients = Vec::with_capacity(n);
        let mut pair_times = Vec::with_capacity(n);
        for t in tasks {
            let (c, d) = t.await.unwrap();
            clients.push(c);
            pair_times.push(d.as_secs_f64() * 1000.0);
        }
        let connect_all = started.elapsed();

        // Let background post-login work settle before measuring memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = rss_kib();
        let heap_after = live_kib();
        let counters = sim.counters();

        // 2. Round trips: A writes to B, B answers A; `pairs` pairs at once.
        let clients = Arc::new(clients);
        let mut rt_rates = Vec::new();
        for round in 0..rounds {
            let t = Instant::now();
            let jobs: Vec<_> = (0..pairs)
                .map(|p| {
                    let clients = clients.clone();
                    tokio::spawn(async move {
                        let (a, b) = (&clients[2 * p], &clients[2 * p + 1]);
                        let (pa, pb) = (format!("1555{:07}", 2 * p), format!("1555{:07}", 2 * p + 1));
                        let ping = format!("ping {round} {p}");
                        let pong = format!("pong {round} {p}");
                        let mb = b.events.mark();
                        let ma = a.events.mark();
                        a.client
                            .send_message(Jid::pn(pb.as_str()), wa::Message {
                                conversation: Some(ping.clone()),
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        wait_text(b, mb, ping).await;
                        b.client
                            .send_message(Jid::pn(pa.as_str()), wa::Message {
                                conversation: Some(pong.clone()),
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        wait_text(a, ma, pong).await;
                    })
                })
                .collect();
            for j in jobs {
                j.await.unwrap();
            }
            let secs = t.elapsed().as_secs_f64();
            rt_rates.push(pairs as f64 / secs);
        }

        // 3. Drop every client: what stays live is the simulator's own state
        //    (accounts, linked devices, phones' Signal sessions, inboxes).
        let clients = Arc::into_inner(clients).expect("round-trip tasks are done");
        for c in clients {
            c.stop().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let heap_sim_only = live_kib();

        let per_client_kib = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
        let heap_total = (heap_after - heap_before) / n as f64;
        let heap_sim = (heap_sim_only - heap_before) / n as f64;
        println!("wagate-sim benchmark: N = {n} clients, {pairs} pairs x {rounds} rounds");
        println!(
            "  pair + connect all:        {:.2} s ({:.1} clients/s; per client median {:.0} ms, concurrency {concurrency})",
            connect_all.as_secs_f64(),
            n as f64 / connect_all.as_secs_f64(),
            median(pair_times)
        );
        println!(
            "  RSS:                        {:.1} MiB before, {:.1} MiB after -> {:.1} KiB per connected client (library + simulator)",
            rss_before as f64 / 1024.0,
            rss_after as f64 / 1024.0,
            per_client_kib
        );
        println!(
            "  live heap per client:       {heap_total:.1} KiB = {:.1} KiB gateway-side client (whatsapp-rust + its in-memory store) + {heap_sim:.1} KiB simulator",
            heap_total - heap_sim
        );
        println!(
            "  1:1 round trips:            median {:.0} round trips/s ({:.0} messages/s), rounds: {:?}",
            median(rt_rates.clone()),
            2.0 * median(rt_rates.clone()),
            rt_rates.iter().map(|r| r.round() as u64).collect::<Vec<_>>()
        );
        println!(
            "  simulator counters:         {} connections, {} frames in, {} frames out, {} routed",
            counters.connections_total, counters.frames_in, counters.frames_out, counters.messages_routed
        );
    });
}
