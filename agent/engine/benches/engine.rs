//! Throughput of verdicts against a 1,000-rule policy, and compilation of a 10,000-rule policy.

use bridle_engine::{compile, Engine, Object, Policy, Target};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

/// A policy with `n` rules of every kind: exact paths, globs, IPv4 and IPv6 networks with port
/// ranges, host names and `*.domain`s, unix sockets; a tenth of them refuse.
fn synthetic(n: usize) -> Policy {
    let mut src = String::from("name = \"bench\"\nversion = 1\ndefault = \"refuse\"\n");
    for i in 0..n {
        let effect = if i % 10 == 0 { "refuse" } else { "permit" };
        let body = match i % 6 {
            0 => format!(
                "exec = [\"/opt/app{i}/bin/tool\", \"/usr/local/app{i}/run\", \"/srv/s{i}/x\"]"
            ),
            1 => format!("exec = [\"/opt/pkg{i}/*\", \"/home/u{i}/.local/**\"]"),
            2 => format!(
                "connect = [\"10.{}.{}.0/24:{}\", \"172.16.{}.{}:443\"]",
                (i / 256) % 256,
                i % 256,
                1000 + i % 5000,
                (i / 256) % 256,
                i % 256
            ),
            3 => format!(
                "connect = [\"[2001:db8:{:x}::/48]:443\", \"[fd00::{:x}]:*\"]",
                i, i
            ),
            4 => format!(
                "connect = [\"api{i}.example.com:443\", \"*.svc{i}.example.net:8000-8999\"]"
            ),
            _ => format!("connect = [\"unix:/run/s{i}.sock\", \"unix:@bus{i}\"]"),
        };
        src.push_str(&format!(
            "[[rule]]\nname = \"rule-{i}\"\neffect = \"{effect}\"\n{body}\n"
        ));
    }
    match Policy::parse(&src, "bench.toml") {
        Ok(p) => p,
        Err(e) => panic!("synthetic policy: {e}"),
    }
}

fn objects() -> Vec<Object> {
    let t = |s: &str| match Target::parse(s) {
        Ok(t) => Object::Connect(t),
        Err(e) => panic!("{s}: {e}"),
    };
    vec![
        Object::Exec("/opt/app600/bin/tool".into()),
        Object::Exec("/opt/pkg601/thing".into()),
        Object::Exec("/home/u601/.local/lib/python/bin/x".into()),
        Object::Exec("/usr/bin/unknown".into()),
        t("10.2.92.7:1604"),
        t("10.2.92.7:80"),
        t("172.16.2.92:443"),
        t("[2001:db8:25b::1]:443"),
        t("[::ffff:10.2.92.7]:1604"),
        t("api604.example.com:443"),
        t("x.svc604.example.net:8080"),
        t("evil.example.org:443"),
        t("unix:/run/s605.sock"),
        t("raw"),
        t("198.51.100.1:443"),
        Object::Exec("/opt/app0/bin/tool".into()),
    ]
}

fn evaluate(c: &mut Criterion) {
    let engine = Engine::new(synthetic(1_000));
    let objects = objects();
    let mut group = c.benchmark_group("verdicts-1000-rules");
    group.throughput(Throughput::Elements(objects.len() as u64));
    group.bench_function("judge", |b| {
        b.iter(|| {
            for o in &objects {
                black_box(engine.judge(black_box(o)));
            }
        })
    });
    let mut stateful = Engine::new(synthetic(1_000));
    group.bench_function("evaluate", |b| {
        b.iter(|| {
            for o in &objects {
                black_box(stateful.evaluate(black_box(o)));
            }
        })
    });
    group.finish();
}

fn compile_large(c: &mut Criterion) {
    let policy = synthetic(10_000);
    let mut group = c.benchmark_group("compile");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("compile-10000-rules", |b| {
        b.iter(|| black_box(compile(black_box(&policy))))
    });
    group.finish();
}

criterion_group!(benches, evaluate, compile_large);
criterion_main!(benches);
