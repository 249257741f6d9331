//! The node view's store bounds what it really allocates: its byte estimate, checked against
//! a counting allocator while the store fills far past its bounds with spans shaped like the
//! agent's (the attributes of an HTTP server and client span, a captured header on some).
//! Its own binary: the counting allocator is this test's global allocator.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    borrow::Cow,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
};

use tracer::{
    span::{AttrValue, Resource, Span, SpanKind, StatusCode},
    ui::{RecentStore, StoreLimits},
};

#[global_allocator]
static ALLOCATOR: Counting = Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
/// Bytes allocated and not freed while counting (as requested: size classes aside).
static LIVE: AtomicI64 = AtomicI64::new(0);

struct Counting;

fn add(bytes: i64) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE.fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as i64));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as i64 - layout.size() as i64);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

const NOW_NS: u64 = 1_700_000_000_000_000_000;

/// A client span and the server span it called (one trace), with the attributes the agent
/// gives them; `i` varies the ids, the path and the ports.
fn pair(i: u32, resource: &Arc<Resource>) -> [Span; 2] {
    let mut trace_id = [7u8; 16];
    trace_id[..4].copy_from_slice(&i.to_le_bytes());
    let path = format!("/items/{i}");
    let fixed = AttrValue::fixed;
    let common = |kind: SpanKind| -> Vec<(&'static str, AttrValue)> {
        let mut a = vec![
            ("http.request.method", fixed("GET")),
            ("url.scheme", fixed("http")),
            ("url.path", path.clone().into()),
            ("http.route", fixed("/items/{id}")),
            ("server.address", "127.0.0.1".into()),
            ("server.port", AttrValue::Int(8080)),
            ("network.peer.address", "127.0.0.1".into()),
            (
                "network.peer.port",
                AttrValue::Int(40_000 + i64::from(i % 20_000)),
            ),
            ("network.protocol.version", fixed("1.1")),
            ("user_agent.original", "python-requests/2.31.0".into()),
            ("http.response.status_code", AttrValue::Int(200)),
            ("http.response.body.size", AttrValue::Int(2)),
        ];
        if kind == SpanKind::Client {
            a.push(("url.full", format!("http://127.0.0.1:8080{path}").into()));
        }
        if i.is_multiple_of(4) {
            a.push((
                "http.request.header.x-tenant",
                AttrValue::StrArray(vec!["gold".into(), "eu-west".into()]),
            ));
        }
        a.push((
            "tracer.parent.source",
            AttrValue::Str(Cow::Borrowed("address")),
        ));
        a
    };
    let span = |kind: SpanKind, id: u8, parent: Option<u8>| Span {
        trace_id,
        span_id: [id; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        trace_state: None,
        flags: 1,
        name: "GET /items/{id}".into(),
        kind,
        start_unix_ns: NOW_NS + u64::from(i) * 1_000,
        end_unix_ns: NOW_NS + u64::from(i) * 1_000 + 500_000,
        attributes: common(kind),
        status: StatusCode::Unset,
        status_message: i
            .is_multiple_of(16)
            .then(|| "upstream timed out".to_owned()),
        resource: resource.clone(),
        events: Vec::new(),
        dropped_events: 0,
    };
    [
        span(SpanKind::Client, 1, None),
        span(SpanKind::Server, 2, Some(1)),
    ]
}

/// Fills a store with `limits` far past them; returns (allocated, estimated) bytes of what
/// it gained after its first trace (which made its route windows and edge: bounded apart, by
/// `max_routes`), and its stats.
fn fill(limits: StoreLimits, traces: u32) -> (i64, i64, tracer::ui::store::StoreStats) {
    let resource = Arc::new(Resource {
        pid: 1,
        attributes: vec![("service.name".into(), "shop".into())],
    });
    // Built beforehand: only the store's own allocations are counted.
    let spans: Vec<[Span; 2]> = (0..traces).map(|i| pair(i, &resource)).collect();
    LIVE.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let store = RecentStore::new(limits, NOW_NS);
    for s in &spans[0] {
        store.insert_span(s);
    }
    let (live_first, bytes_first) = (LIVE.load(Ordering::Relaxed), store.stats().bytes as i64);
    for pair in &spans[1..] {
        for s in pair {
            store.insert_span(s);
        }
    }
    let stats = store.stats();
    let live = LIVE.load(Ordering::Relaxed);
    COUNTING.store(false, Ordering::Relaxed);
    drop(store);
    (live - live_first, stats.bytes as i64 - bytes_first, stats)
}

#[test]
fn the_byte_bound_bounds_what_the_store_allocates() {
    for limits in [
        // The byte bound is the one reached.
        StoreLimits {
            max_spans: 1_000_000,
            max_bytes: 4 << 20,
            max_routes: 100,
            max_new_traces_per_sec: 0,
        },
        // The span bound is.
        StoreLimits {
            max_spans: 5_000,
            max_bytes: 64 << 20,
            max_routes: 100,
            max_new_traces_per_sec: 0,
        },
    ] {
        let (allocated, estimated, stats) = fill(limits, 40_000);
        assert!(stats.spans_evicted > 40_000, "{stats:?}");
        assert!(stats.bytes <= limits.max_bytes, "{stats:?}");
        assert!(stats.spans <= limits.max_spans, "{stats:?}");
        // Whole traces only.
        assert_eq!(stats.spans, 2 * stats.traces, "{stats:?}");
        // The estimate counts everything the spans and their tables hold (allocated sizes
        // as requested; the estimate adds the allocator's size classes), and not much more.
        assert!(
            allocated <= estimated && estimated as f64 <= 1.25 * allocated as f64,
            "allocated {allocated} B, estimated {estimated} B, {stats:?}"
        );
    }
}
