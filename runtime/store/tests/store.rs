//! The event store's contract, for both stores, and the fjall store's
//! durability: across reopening, and across the process being killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tbgw_core::{DeviceRecord, DeviceUpdate, Entry, Event, Telemetry, Value};
use tbgw_store::{Durability, EventStore, FjallStore, MemoryStore, StoreError, StoreLimits, WhenFull};

fn event(device: &str, n: i64) -> Event {
    Event {
        connector: "mqtt".into(),
        update: DeviceUpdate {
            device: device.into(),
            device_type: None,
            attributes: vec![],
            telemetry: vec![Telemetry {
                ts: Some(1_700_000_000_000 + n),
                values: vec![Entry::new("n", Value::Int(n))],
            }],
        },
        updates: 1,
    }
}

fn n_of(e: &Event) -> i64 {
    match e.update.telemetry[0].values[0].value {
        Value::Int(n) => n,
        ref other => panic!("{other:?}"),
    }
}

fn limits(max_records: u64, when_full: WhenFull) -> StoreLimits {
    StoreLimits { max_records, max_bytes: 1 << 30, when_full, dead_letters: Default::default() }
}

/// Run `check` against a fresh store of each kind.
fn each_store(limits: StoreLimits, check: impl Fn(Arc<dyn EventStore>)) {
    check(Arc::new(MemoryStore::new(limits)));
    let dir = tempfile::tempdir().expect("tempdir");
    check(Arc::new(FjallStore::open(dir.path(), limits, Durability::PerBatch).expect("open")));
}

#[test]
fn events_come_back_in_order_until_removed() {
    each_store(limits(1000, WhenFull::Block), |store| {
        let seqs = store.append(&(0..10).map(|n| event("a", n)).collect::<Vec<_>>()).expect("append");
        assert_eq!(seqs.end - seqs.start, 10);
        let more = store.append(&[event("b", 10)]).expect("append");
        assert_eq!(more.start, seqs.end);

        let read = store.read(seqs.start, 100).expect("read");
        let ns: Vec<i64> = read.iter().map(|(_, e)| n_of(e)).collect();
        assert_eq!(ns, (0..=10).collect::<Vec<_>>());

        // Delivered out of order: the middle first, then the head.
        store.remove(seqs.start + 3..seqs.start + 5).expect("remove");
        store.remove(seqs.start..seqs.start + 3).expect("remove");
        store.remove(seqs.start..seqs.start + 1).expect("removing twice is fine");
        let read = store.read(seqs.start, 100).expect("read");
        let ns: Vec<i64> = read.iter().map(|(_, e)| n_of(e)).collect();
        assert_eq!(ns, vec![5, 6, 7, 8, 9, 10]);
        let stats = store.stats();
        assert_eq!((stats.records, stats.appended, stats.removed), (6, 11, 5));
        assert_eq!(stats.first_seq, Some(seqs.start + 5));
        assert_eq!(store.read(seqs.start + 9, 1).expect("read")[0].1, event("a", 9));
    });
}

#[test]
fn drop_oldest_holds_the_bound() {
    each_store(limits(50, WhenFull::DropOldest), |store| {
        for batch in 0..20 {
            store.append(&(0..7).map(|n| event("a", batch * 7 + n)).collect::<Vec<_>>()).expect("append");
            assert!(store.stats().records <= 50, "the bound was exceeded");
        }
        let stats = store.stats();
        assert_eq!((stats.records, stats.dropped), (50, 140 - 50));
        let first = store.read(0, 1).expect("read");
        assert_eq!(n_of(&first[0].1), 90, "the oldest were dropped, the newest kept");
    });
}

#[test]
fn block_waits_for_delivery_to_make_room() {
    each_store(limits(10, WhenFull::Block), |store| {
        let seqs = store.append(&(0..10).map(|n| event("a", n)).collect::<Vec<_>>()).expect("append");
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                store.append(&[event("a", 10)]).map(|_| started.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!writer.is_finished(), "append did not wait for room");
        store.remove(seqs.start..seqs.start + 1).expect("remove");
        let waited = writer.join().expect("writer").expect("append after room was made");
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert_eq!(store.stats().records, 10);
    });
}

#[test]
fn closing_releases_a_blocked_append() {
    each_store(limits(1, WhenFull::Block), |store| {
        store.append(&[event("a", 0)]).expect("append");
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || store.append(&[event("a", 1)]))
        };
        std::thread::sleep(Duration::from_millis(100));
        store.close();
        assert!(matches!(writer.join().expect("writer"), Err(StoreError::Closed)));
    });
}

#[test]
fn a_batch_larger_than_the_store_is_refused() {
    each_store(limits(3, WhenFull::DropOldest), |store| {
        let err = store.append(&(0..4).map(|n| event("a", n)).collect::<Vec<_>>()).unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { records: 4, max_records: 3, .. }), "{err}");
    });
}

#[test]
fn devices_are_remembered() {
    each_store(limits(10, WhenFull::Block), |store| {
        let d = DeviceRecord { device_type: Some("thermometer".into()), connector: "mqtt".into(), renamed: None };
        store.put_device("SN-1", &d).expect("put");
        store.put_device("SN-2", &d).expect("put");
        store.remove_device("SN-2").expect("remove");
        assert_eq!(store.devices().expect("devices"), vec![("SN-1".to_owned(), d)]);
    });
}

#[test]
fn a_reopened_store_resumes_where_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = limits(1000, WhenFull::Block);
    let seqs;
    {
        let store = FjallStore::open(dir.path(), l, Durability::PerBatch).expect("open");
        seqs = store.append(&(0..100).map(|n| event("a", n)).collect::<Vec<_>>()).expect("append");
        store.remove(seqs.start..seqs.start + 40).expect("remove");
        store
            .put_device("SN-1", &DeviceRecord { device_type: None, connector: "mqtt".into(), renamed: None })
            .expect("put");
    }
    let store = FjallStore::open(dir.path(), l, Durability::PerBatch).expect("reopen");
    let stats = store.stats();
    assert_eq!((stats.records, stats.first_seq), (60, Some(seqs.start + 40)));
    let read = store.read(0, 1000).expect("read");
    assert_eq!(read.iter().map(|(_, e)| n_of(e)).collect::<Vec<_>>(), (40..100).collect::<Vec<_>>());
    assert_eq!(store.devices().expect("devices").len(), 1);

    // Sequence numbers are never reused, even once everything was delivered.
    store.remove(0..seqs.end).expect("remove all");
    drop(store);
    let store = FjallStore::open(dir.path(), l, Durability::PerBatch).expect("reopen");
    let next = store.append(&[event("a", 100)]).expect("append");
    assert_eq!(next.start, seqs.end);
}

const CHILD_DIR: &str = "TBGW_STORE_TEST_CHILD_DIR";

/// Not a test on its own: the writer process of
/// `a_killed_writer_loses_nothing_it_confirmed`, which runs it with `--ignored`.
#[test]
#[ignore = "run by a_killed_writer_loses_nothing_it_confirmed"]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else { return };
    // Buffered writes: durable against a process crash without fsync.
    let store = FjallStore::open(
        dir.as_ref(),
        limits(10_000_000, WhenFull::Block),
        Durability::Interval(Duration::from_secs(60)),
    )
    .expect("open");
    let mut n = 0;
    loop {
        let batch: Vec<Event> = (0..100).map(|i| event("k", n + i)).collect();
        let seqs = store.append(&batch).expect("append");
        n += 100;
        // A line per confirmed batch: the parent kills us at some point.
        println!("confirmed {} {}", seqs.end, n);
    }
}

#[test]
fn a_killed_writer_loses_nothing_it_confirmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_writer", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the writer");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut confirmed = 0i64;
    while confirmed < 20_000 {
        let line = lines.next().expect("the writer stopped early").expect("read");
        if let Some(rest) = line.strip_prefix("confirmed ") {
            confirmed = rest.split(' ').nth(1).and_then(|n| n.parse().ok()).expect("a count");
        }
    }
    child.kill().expect("SIGKILL"); // SIGKILL on Unix: no destructor, no flush
    child.wait().expect("reap");

    let store =
        FjallStore::open(dir.path(), limits(10_000_000, WhenFull::Block), Durability::PerBatch).expect("reopen");
    let events = store.read(0, usize::MAX).expect("read");
    assert!(events.len() as i64 >= confirmed, "{} events stored, {confirmed} confirmed", events.len());
    for (i, (_, e)) in events.iter().enumerate() {
        assert_eq!(n_of(e), i as i64, "events out of order or missing");
    }
}

fn letter(n: usize) -> tbgw_store::DeadLetter {
    tbgw_store::DeadLetter {
        connector: "mqtt".into(),
        route: "connectors[0].configuration.mapping[0].converter".into(),
        converter: "mqtt/json".into(),
        converter_sha256: "0".repeat(64),
        reason: format!("bad message {n}"),
        failed_at: 1_700_000_000_000,
        raw: tbgw_core::RawUplink {
            source: tbgw_core::Source::mqtt("sensor/a/data"),
            device: None,
            payload: format!("garbage {n}").into_bytes(),
            metadata: vec![],
            received_at: 1_700_000_000_000,
        },
    }
}

#[test]
fn dead_letters_are_kept_bounded_and_survive_reopening() {
    let bounded = StoreLimits {
        dead_letters: tbgw_store::DeadLetterLimits {
            max_records: 3,
            max_bytes: 1 << 20,
            when_full: tbgw_store::DeadLetterFull::DropOldest,
        },
        ..limits(1000, WhenFull::Block)
    };
    each_store(bounded, |store| {
        store.put_dead_letters(&(0..5).map(letter).collect::<Vec<_>>()).expect("keep");
        let kept = store.dead_letters(0, 100).expect("read");
        let reasons: Vec<&str> = kept.iter().map(|(_, l)| l.reason.as_str()).collect();
        assert_eq!(reasons, ["bad message 2", "bad message 3", "bad message 4"], "the oldest gave way");
        assert_eq!(kept[0].1, letter(2), "kept as it came");
        let stats = store.stats();
        assert_eq!((stats.dead_letters, stats.dead_letters_dropped), (3, 2));
        store.remove_dead_letters(&[kept[1].0]).expect("remove");
        assert_eq!(store.dead_letters(0, 100).expect("read").len(), 2);
        store.close();
        assert!(matches!(store.put_dead_letters(&[letter(9)]), Err(StoreError::Closed)));
    });
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = FjallStore::open(dir.path(), bounded, Durability::PerBatch).expect("open");
        store.put_dead_letters(&[letter(1), letter(2)]).expect("keep");
    }
    let store = FjallStore::open(dir.path(), bounded, Durability::PerBatch).expect("reopen");
    let kept = store.dead_letters(0, 100).expect("read");
    assert_eq!(kept.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(), vec![letter(1), letter(2)]);
    assert_eq!(store.stats().dead_letters, 2);
    // New letters after reopening do not reuse an id.
    store.put_dead_letters(&[letter(3)]).expect("keep");
    let ids: Vec<u64> = store.dead_letters(0, 100).expect("read").iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]) && ids.len() == 3, "{ids:?}");
}
