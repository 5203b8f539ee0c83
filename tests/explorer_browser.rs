//! The explorer page in a real browser: Debian's headless Chromium (installed by
//! scripts/setup-chromium.sh, which `make test` runs) driven over the DevTools protocol. The
//! page is written by `msclip-analyze explore` for a two-pair gallery of the check fixture; the
//! test hovers a word and a patch with real mouse events, switches layer and head with real
//! key presses, and compares what the page drew (its `window.__msclip.state()` hook) with the
//! unquantised CSV and with `attention`'s maps, within one quantisation step (max/255). It also
//! requires no console error, no uncaught exception, and no request but the page itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::Network;
use headless_chrome::protocol::cdp::Runtime::ConsoleAPICalledEventTypeOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;

use msclip::checkpoint::ModelSource;
use msclip::commands::attention::{self, AttentionOptions};

const CKPT: &str = "fixtures/check/ckpt";
const MANIFEST: &str = "fixtures/check/data/manifest.tsv";

/// Chromium, or `None` with the reason the setup script recorded (the skip is then printed
/// and the Makefile repeats it at the end of `make test`). Without a recorded reason a missing
/// browser is a failure: the setup step did not run.
fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var("MSCLIP_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if path.is_file() {
        return Some(path);
    }
    let marker = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/chromium-unavailable.txt");
    match std::fs::read_to_string(&marker) {
        Ok(why) => {
            eprintln!("SKIPPED explorer browser test: Chromium could not be installed: {}", why.trim());
            None
        }
        Err(_) => panic!("{} is missing and scripts/setup-chromium.sh recorded no reason: run `make test` (or the script)", path.display()),
    }
}

fn explore(out: &Path) {
    let st = Command::new(env!("CARGO_BIN_EXE_msclip-analyze"))
        .args(["explore", "--checkpoint", CKPT, "--manifest", MANIFEST, "--limit", "2", "--out"])
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success());
}

fn state(tab: &Tab) -> Value {
    let v = tab.evaluate("JSON.stringify(window.__msclip.state())", false).unwrap().value.expect("state() returns a value");
    serde_json::from_str(v.as_str().unwrap()).unwrap()
}

fn wait_for(tab: &Tab, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = state(tab);
        if ok(&s) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "page never reached: {what}; state {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Every drawn value within one quantisation step (max/255) of the reference.
fn assert_close(what: &str, drawn: &[f64], want: &[f64]) {
    assert_eq!(drawn.len(), want.len(), "{what}: length");
    let max = want.iter().cloned().fold(0.0f64, f64::max);
    assert!(max > 0.0, "{what}: all-zero reference");
    for (i, (d, w)) in drawn.iter().zip(want).enumerate() {
        assert!((d - w).abs() <= max / 255.0 + 1e-9, "{what}[{i}]: drawn {d}, reference {w} (step {})", max / 255.0);
    }
}

/// `attribution.csv` values of one pair's token-relevancy map (the page's unquantised source).
fn csv_token_map(dir: &Path, pair: usize, token: usize) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join("attribution.csv")).unwrap();
    let mut rows: Vec<(usize, f64)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0] == pair.to_string() && f[1] == "token_relevancy" && f[2] == token.to_string())
                .then(|| (f[f.len() - 2].parse().unwrap(), f[f.len() - 1].parse().unwrap()))
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    rows.into_iter().map(|r| r.1).collect()
}

#[test]
fn explorer_page_in_headless_chromium() {
    let Some(chrome) = chromium() else { return };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("explorer-browser");
    let _ = std::fs::remove_dir_all(&dir);
    explore(&dir);
    let page = dir.join("index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("Content-Security-Policy") && !html.contains("http://") && !html.contains("https://"), "self-contained");

    let profile = dir.join("chromium-profile");
    let flags: Vec<&std::ffi::OsStr> =
        ["--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
            .iter()
            .map(std::ffi::OsStr::new)
            .collect();
    let browser = Browser::new(
        LaunchOptions::default_builder()
            .path(Some(chrome))
            .headless(true)
            .sandbox(false)
            .window_size(Some((1280, 800)))
            .user_data_dir(Some(profile))
            .args(flags)
            .build()
            .unwrap(),
    )
    .expect("Chromium starts");
    let tab = browser.new_tab().unwrap();
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let requests = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let (p, r) = (problems.clone(), requests.clone());
        tab.add_event_listener(Arc::new(move |e: &Event| match e {
            Event::RuntimeConsoleAPICalled(c) if c.params.Type == ConsoleAPICalledEventTypeOption::Error => {
                p.lock().unwrap().push(format!("console.error: {:?}", c.params.args.first().and_then(|a| a.value.clone())))
            }
            Event::RuntimeExceptionThrown(x) => p.lock().unwrap().push(format!("exception: {}", x.params.exception_details.text)),
            Event::LogEntryAdded(l) if format!("{:?}", l.params.entry.level).contains("Error") => {
                p.lock().unwrap().push(format!("log: {}", l.params.entry.text))
            }
            Event::NetworkRequestWillBeSent(q) => r.lock().unwrap().push(q.params.request.url.clone()),
            _ => {}
        }))
        .unwrap();
    }
    tab.enable_runtime().unwrap();
    tab.enable_log().unwrap();
    tab.call_method(Network::Enable {
        max_total_buffer_size: None,
        max_resource_buffer_size: None,
        max_post_data_size: None,
        report_direct_socket_traffic: None,
        enable_durable_messages: None,
    })
    .unwrap();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    tab.navigate_to(&url).unwrap().wait_until_navigated().unwrap();
    let s0 = wait_for(&tab, "image loaded", |s| s["imageLoaded"] == true);
    let n_slots = 6usize;
    assert_eq!((s0["slot"].as_u64(), s0["head"].as_i64(), s0["mode"].as_str()), (Some(n_slots as u64 - 1), Some(-1), Some("token")));

    // 1. Hover two words (those whose map is not all zero: a token whose score has only
    // negative gradients at the last layer has an empty relevancy map): each drawn map equals
    // the CSV's, within 1/255.
    let words = tab.find_elements(".word").unwrap();
    let mut hovered = 0;
    for word in &words {
        let token: usize = word.get_attribute_value("data-token").unwrap().unwrap().parse().unwrap();
        let want = csv_token_map(&dir, 0, token);
        assert_eq!(want.len(), 16, "4×4 patches");
        if want.iter().all(|&v| v == 0.0) {
            continue;
        }
        word.move_mouse_over().unwrap();
        let s = wait_for(&tab, "token overlay", |s| s["overlay"]["token"].as_u64() == Some(token as u64));
        assert_eq!(s["overlay"]["kind"], "token");
        assert_close(&format!("hovered token {token}'s relevancy"), &floats(&s["overlay"]["values"]), &want);
        hovered += 1;
    }
    assert!(hovered >= 2, "only {hovered} word(s) with a non-zero map");

    // 2. Hover a patch of the image: the page reports that patch (row 2, column 1 of 4×4).
    let bx = tab.find_element("#image").unwrap().get_box_model().unwrap();
    let (x0, y0, w) = (bx.content.top_left.x, bx.content.top_left.y, bx.content.width());
    tab.move_mouse_to_point(headless_chrome::browser::tab::point::Point { x: x0 + w * 1.5 / 4.0, y: y0 + w * 2.5 / 4.0 }).unwrap();
    wait_for(&tab, "hovered patch", |s| s["hoverPatch"].as_u64() == Some(2 * 4 + 1));

    // 3. Keys: ↓ one layer down, → head 0, → head 1; each drawn map is attention's own map.
    let model = ModelSource::Checkpoint(CKPT.into()).load(0).unwrap();
    let manifest = msclip::data::manifest::read(Path::new(MANIFEST), &Default::default()).unwrap();
    let att = attention::run(
        &model,
        &AttentionOptions { image: Some(manifest[0].image.clone()), caption: Some(manifest[0].caption.clone()), ..Default::default() },
    )
    .unwrap();
    // Focus the page on a spot that reacts to nothing (a click on a map would pick a query).
    tab.find_element("header h1").unwrap().click().unwrap();
    let mut seen = Vec::new();
    for (key, slot, head) in [("ArrowDown", n_slots - 2, 0i64), ("ArrowRight", n_slots - 2, 0), ("ArrowRight", n_slots - 2, 1)] {
        if key == "ArrowDown" {
            tab.press_key(key).unwrap();
            wait_for(&tab, "layer down", |s| s["slot"].as_u64() == Some(slot as u64));
            continue;
        }
        tab.press_key(key).unwrap();
        let s = wait_for(&tab, "head switch", |s| s["head"].as_i64() == Some(head) && s["vision"]["head"].as_i64() == Some(head));
        assert_eq!((s["vision"]["slot"].as_u64(), s["vision"]["query"].as_u64()), (Some(slot as u64), Some(0)), "CLS query");
        let vi = att.vision_slots.iter().position(|&x| x == slot).expect("a vision slot");
        let vmap = &att.vision_maps[vi][head as usize];
        assert_eq!((vmap.slot, vmap.head), (slot, Some(head as usize)));
        let want: Vec<f64> = vmap.values.iter().map(|&v| v as f64).collect();
        let drawn = floats(&s["vision"]["values"]);
        assert_close(&format!("vision CLS→patch, slot {slot} head {head}"), &drawn, &want);
        let tmap = &att.text_maps[att.text_slots.iter().position(|&x| x == slot).unwrap()][head as usize];
        let twant: Vec<f64> = tmap.values.iter().map(|&v| v as f64).collect();
        assert_close(&format!("text, slot {slot} head {head}"), &floats(&s["text"]["values"]), &twant);
        seen.push(drawn);
    }
    assert_ne!(seen[0], seen[1], "heads 0 and 1 draw different maps");

    // 4. No console error or exception; no request but the page (the CSP forbids the rest).
    let s = state(&tab);
    assert_eq!(s["errors"], serde_json::json!([]));
    let problems = problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "console: {problems:?}");
    let requests = requests.lock().unwrap().clone();
    assert!(requests.iter().all(|u| u == &url || u.starts_with("data:")), "requests: {requests:?}");
}
