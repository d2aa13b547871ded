//! `--watch-config`: a change of the `--config` file reloads as SIGHUP
//! does, whether the file is rewritten in place or swapped the way
//! Kubernetes updates a mounted ConfigMap (a new `..data` symlink renamed
//! over the old one); a bad file is refused as on SIGHUP; a write that
//! changes nothing reloads nothing.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::*;

/// How many request heads `b` has seen.
fn requests(b: &Backend) -> usize {
    b.requests.lock().unwrap().len()
}

fn chat_to(b: &Backend) -> String {
    format!(
        "upstream = [\"chat={}\"]\nroute = [\"/ws/=chat\"]\n",
        b.addr
    )
}

/// Longer than the watcher lets a burst of events settle (100 ms), so that
/// what follows is seen by an event of its own.
fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

/// A new connection's echo, then which of `one`/`two` took it.
fn lands_on(proxy: &Proxy, one: &Backend, two: &Backend) -> (usize, usize) {
    let mut ws = ws_client(proxy, "/ws/x");
    echo_once(&mut ws, "which server?");
    close_and_drain(&mut ws);
    (requests(one), requests(two))
}

#[test]
fn a_rewrite_in_place_reloads_and_a_bad_file_is_refused() {
    let (one, two) = (Backend::echo(), Backend::echo());
    let dir = TempDir::new();
    let file = dir.file("ringway.toml", &chat_to(&one));
    let proxy = Proxy::start(&["--config", &file, "--watch-config"]);
    proxy
        .wait_log("for changes (--watch-config)", PATIENCE)
        .expect("the watch is logged");
    assert_eq!(lands_on(&proxy, &one, &two), (1, 0));

    // Rewritten in place (open, truncate, write, close), as `cat >` does.
    std::fs::write(&file, chat_to(&two)).unwrap();
    let line = proxy
        .wait_log("config file change: configuration reloaded", PATIENCE)
        .expect("the change reloads");
    assert!(line.contains("1 routes, 1 groups, 1 servers"), "{line}");
    assert_eq!(lands_on(&proxy, &one, &two), (1, 1));

    // A file that does not parse: refused as on SIGHUP, the one in force
    // stays.
    std::fs::write(&file, "upstream = [\n").unwrap();
    let line = proxy
        .wait_log("config file change: configuration reload failed", PATIENCE)
        .expect("the bad file is refused");
    assert!(
        line.contains("keeping the configuration in force"),
        "{line}"
    );
    assert_eq!(lands_on(&proxy, &one, &two), (1, 2));

    // Mended: reloaded again.
    std::fs::write(&file, chat_to(&one)).unwrap();
    proxy.wait_count("config file change: configuration reloaded", 2, PATIENCE);
    assert_eq!(lands_on(&proxy, &one, &two), (2, 2));
    assert_eq!(proxy.count_logs("configuration reload failed"), 1);
}

/// What the kubelet does to a ConfigMap volume at `root`: the new
/// `ringway.toml` in a new timestamped folder, a symlink to that folder
/// renamed over `..data`, the old folder removed. The first time (no
/// `..data` yet) it makes the mount: `ringway.toml -> ..data/ringway.toml`.
fn kubelet_writes(root: &Path, stamp: &str, text: &str) {
    let folder = root.join(format!("..2026_12_04_{stamp}"));
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("ringway.toml"), text).unwrap();
    let old = std::fs::read_link(root.join("..data")).ok();
    if old.is_none() {
        symlink(folder.file_name().unwrap(), root.join("..data")).unwrap();
        symlink("..data/ringway.toml", root.join("ringway.toml")).unwrap();
        return;
    }
    symlink(folder.file_name().unwrap(), root.join("..data_tmp")).unwrap();
    // Past the watcher's settling time, so that only the rename can be
    // what it sees the new file by.
    settle();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join(old.unwrap())).unwrap();
}

#[test]
fn a_kubernetes_configmap_swap_reloads() {
    let (one, two) = (Backend::echo(), Backend::echo());
    let dir = TempDir::new();
    let root = Path::new(&dir.path("")).to_path_buf();
    kubelet_writes(&root, "01_00_00.000000001", &chat_to(&one));
    let file = root.join("ringway.toml");
    let proxy = Proxy::start(&["--config", file.to_str().unwrap(), "--watch-config"]);
    proxy
        .wait_log("for changes (--watch-config)", PATIENCE)
        .expect("the watch is logged");
    assert_eq!(lands_on(&proxy, &one, &two), (1, 0));

    kubelet_writes(&root, "01_01_00.000000002", &chat_to(&two));
    proxy
        .wait_log("config file change: configuration reloaded", PATIENCE)
        .expect("the swap reloads");
    assert_eq!(lands_on(&proxy, &one, &two), (1, 1));

    // And again: the watch outlives the folder it first resolved into.
    kubelet_writes(&root, "01_02_00.000000003", &chat_to(&one));
    proxy.wait_count("config file change: configuration reloaded", 2, PATIENCE);
    assert_eq!(lands_on(&proxy, &one, &two), (2, 1));
}

#[test]
fn an_editor_s_rename_reloads_and_an_unchanged_write_does_not() {
    let (one, two) = (Backend::echo(), Backend::echo());
    let dir = TempDir::new();
    let file = dir.file("ringway.toml", &chat_to(&one));
    let proxy = Proxy::start(&[
        "--config",
        &file,
        "--watch-config",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    proxy
        .wait_log("for changes (--watch-config)", PATIENCE)
        .expect("the watch is logged");

    // The same bytes written again, and another file of the folder
    // written: nothing to reload. Then a change, so that the test knows
    // the watcher has seen everything before it.
    std::fs::write(&file, chat_to(&one)).unwrap();
    dir.file("notes.txt", "unrelated");
    // An editor's save: a new file renamed over the old.
    let tmp = dir.file("ringway.toml.swp", &chat_to(&two));
    settle();
    std::fs::rename(&tmp, &file).unwrap();
    proxy
        .wait_log("config file change: configuration reloaded", PATIENCE)
        .expect("the rename reloads");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        proxy.count_logs("configuration reloaded"),
        1,
        "{:?}",
        proxy.logs()
    );
    assert_eq!(lands_on(&proxy, &one, &two), (0, 1));
    let (_, text) = scrape(metrics_addr(&proxy), "/metrics");
    assert_eq!(
        value(&text, "ringway_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "ringway_config_reloads_total{result=\"failed\"}"),
        Some(0.0)
    );
}

#[test]
fn watch_config_needs_a_config_file() {
    let (code, err) = run_to_exit(&["--watch-config", "--upstream", "127.0.0.1:9"], PATIENCE);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--config"), "{err}");
}
