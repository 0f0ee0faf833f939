//! The fleet dashboard (`/ui/...`) and its read API (`/api/...`).
//!
//! Plain HTTP tests check the JSON and that every value a user signed is
//! escaped, secrets sealed and long strings cut. `browser_*` drives the
//! pages in headless Chromium through chromedriver (`/usr/bin/chromedriver`,
//! Debian's `chromium` and `chromium-driver`, which scripts/test.sh
//! installs) against the `explorer serve` binary: the fleet page and its
//! bars, live refresh, an injected script that never runs, and a 390 px
//! wide screen. With `UPDATE_SCREENSHOT=1` it writes docs/dashboard.png.

#[macro_use]
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{
    cap, confirm_deleted, delete, heartbeat, post_as, register, registration, send, signed, start,
    uptime, VOLUME,
};
use reservation::{Identity, Reservation, ResultState};
use serde_json::value::RawValue;
use serde_json::{json, Value};

const CSP: &str = "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const NODE_URL: &str = "http://10.0.0.7:8080";

/// A `data` that tries to run a script three ways, with a 60 000 byte
/// string.
fn hostile_data() -> String {
    json!({
        "name": "<script>window.pwned=1;document.title='pwned'</script>",
        "img": "<img src=x onerror=\"window.pwned=2;document.title='pwned'\">",
        "close": "</pre></main><script src=\"data:text/javascript,window.pwned=3\"></script>",
        "big": "A".repeat(60_000),
    })
    .to_string()
}

/// What the fixture stored: one node (three heartbeats), one user and
/// six reservations, one of each type: `1-1` a volume deployed, `2-1` a
/// container with secrets whose result is an error, `3-1` a zdb deleted
/// (asked by the user, confirmed by the node), `4-1` a network with hostile
/// data, `5-1` a kubernetes node deployed, `6-1` a debug forwarder pending.
struct Fleet {
    node: Identity,
    user: Identity,
    container: Reservation,
}

fn ok(status: u16) {
    assert!((200..300).contains(&status), "{status}");
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_string()).unwrap()
}

async fn fleet(c: &reqwest::Client, url: &str) -> Fleet {
    let (node, user) = (Identity::generate(), Identity::generate());
    let mut reg = registration(&node, NODE_URL);
    reg = reservation::node::Registration::signed(
        &node,
        &reg.url,
        &cap(8, 16, 100, 500),
        common::now_ms(),
    );
    ok(register(c, url, &reg).await.0);
    for (i, used) in [cap(1, 2, 10, 0), cap(2, 6, 20, 50), cap(2, 4, 20, 100)]
        .into_iter()
        .enumerate()
    {
        let (st, text) = heartbeat(c, url, node.id(), &uptime(&node, 60 * i as u64, used)).await;
        assert!((200..300).contains(&st), "{text}");
    }
    let now = Utc::now();
    let put = |r: &Reservation, state: ResultState, error: &str, data: &str| {
        let res = node.sign_result(&r.kind, &r.id, &r.signature, state, error.into(), raw(data));
        send(c.put(format!("{url}/reservations/{}", r.id)).json(&res))
    };

    let volume = post_as(
        c,
        url,
        &signed(&user, node.id(), "volume", VOLUME, now, 3600),
    )
    .await;
    assert_eq!(
        put(&volume, ResultState::Ok, "", r#"{"volume_id":"1-1"}"#)
            .await
            .0,
        200
    );

    let secrets = r#"{"flist":"https://hub/x.flist","env":{"MODE":"prod"},"secret_env":{"API_KEY":"c0ffee00"},"password":"abad1dea"}"#;
    let container = post_as(
        c,
        url,
        &signed(&user, node.id(), "container", secrets, now, 7200),
    )
    .await;
    let (st, text) = put(
        &container,
        ResultState::Error,
        "image <b>not</b> found",
        "null",
    )
    .await;
    assert_eq!(st, 200, "{text}");

    let zdb = post_as(
        c,
        url,
        &signed(
            &user,
            node.id(),
            "zdb",
            r#"{"size":1,"mode":"seq","password":"feedbeef"}"#,
            now,
            3600,
        ),
    )
    .await;
    ok(delete(c, url, &user, &zdb).await.0);
    let conf = node.sign_deleted(&zdb.id, &zdb.signature);
    ok(confirm_deleted(c, url, &zdb.id, &conf).await.0);

    let hostile = post_as(
        c,
        url,
        &signed(&user, node.id(), "network", &hostile_data(), now, 3600),
    )
    .await;
    // The other two types: a k3s node deployed (its cluster secret is
    // sealed), a debug forwarder not answered yet.
    let k8s = post_as(
        c,
        url,
        &signed(
            &user,
            node.id(),
            "kubernetes",
            r#"{"size":1,"network_id":"net","ip":"10.9.0.5","cluster_secret":"5ea1ed","master_ips":[],"ssh_keys":[]}"#,
            now,
            3600,
        ),
    )
    .await;
    ok(put(
        &k8s,
        ResultState::Ok,
        "",
        r#"{"id":"c0ffee","ip":"10.9.0.5"}"#,
    )
    .await
    .0);
    let debug = post_as(
        c,
        url,
        &signed(
            &user,
            node.id(),
            "debug",
            r#"{"host":"127.0.0.1:6379","channel":"logs"}"#,
            now,
            3600,
        ),
    )
    .await;
    assert_eq!(
        [
            volume.id.as_str(),
            &container.id,
            &zdb.id,
            &hostile.id,
            &k8s.id,
            &debug.id
        ],
        ["1-1", "2-1", "3-1", "4-1", "5-1", "6-1"]
    );
    Fleet {
        node,
        user,
        container,
    }
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = c.get(url).send().await.unwrap();
    let (st, h) = (r.status().as_u16(), r.headers().clone());
    (st, h, r.text().await.unwrap())
}

async fn get_json(c: &reqwest::Client, url: &str) -> Value {
    let (st, h, text) = get(c, url).await;
    assert_eq!(st, 200, "{url}: {text}");
    assert_eq!(h["content-security-policy"], CSP);
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn api_json_lists_the_fleet_a_node_a_reservation_and_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(1)).await;
    let c = reqwest::Client::new();
    let f = fleet(&c, &s.url).await;
    let node = f.node.id();

    let v = get_json(&c, &format!("{}/api/fleet", s.url)).await;
    assert_eq!(v["heartbeat_interval_s"], 30);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 1);
    let n = &v["nodes"][0];
    assert_eq!(n["node_id"], node);
    assert_eq!(n["url"], NODE_URL);
    assert_eq!(
        n["capacity"],
        json!({"cru": 8, "mru": 16, "sru": 100, "hru": 500})
    );
    assert_eq!(
        n["used"],
        json!({"cru": 2, "mru": 4, "sru": 20, "hru": 100})
    );
    assert!(n["last_heartbeat"].is_string());
    // Active ones only: the zdb is deleted.
    assert_eq!(
        n["workloads"],
        json!({"container": 1, "debug": 1, "kubernetes": 1, "network": 1, "volume": 1})
    );
    assert_eq!(v["totals"]["nodes"], 1);
    assert_eq!(v["totals"]["capacity"]["hru"], 500);
    assert_eq!(v["totals"]["workloads"]["volume"], 1);

    let v = get_json(&c, &format!("{}/api/nodes/{node}", s.url)).await;
    let states: Vec<(&str, &str)> = v["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("1-1", "deployed"),
            ("2-1", "error"),
            ("3-1", "deleted"),
            ("4-1", "pending"),
            ("5-1", "deployed"),
            ("6-1", "pending")
        ]
    );
    assert_eq!(v["heartbeats"].as_array().unwrap().len(), 3);
    assert_eq!(v["heartbeats"][1]["used"]["mru"], 6);
    assert_eq!(
        v["types"],
        json!([
            "container",
            "debug",
            "kubernetes",
            "network",
            "volume",
            "zdb"
        ])
    );
    let v = get_json(&c, &format!("{}/api/nodes/{node}?state=error", s.url)).await;
    assert_eq!(v["reservations"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["reservations"][0]["result_error"],
        "image <b>not</b> found"
    );
    let v = get_json(&c, &format!("{}/api/nodes/{node}?type=zdb&state=", s.url)).await;
    assert_eq!(v["reservations"][0]["id"], "3-1");
    assert_eq!(v["reservations"].as_array().unwrap().len(), 1);

    let v = get_json(&c, &format!("{}/api/reservations/2-1", s.url)).await;
    assert_eq!(v["user_id"], f.user.id());
    assert_eq!(v["signature"], f.container.signature);
    assert_eq!(v["user_signature_verifies"], true);
    assert_eq!(v["data"]["env"]["MODE"], "prod");
    assert_eq!(v["data"]["secret_env"]["API_KEY"], "<sealed>");
    assert_eq!(v["data"]["password"], "<sealed>");
    assert_eq!(v["result"]["state"], "error");
    assert_eq!(v["result"]["signature_verifies"], true);
    assert_eq!(v["result"]["attempts"], 1);
    let v = get_json(&c, &format!("{}/api/reservations/3-1", s.url)).await;
    assert_eq!(
        (v["to_delete"].clone(), v["deleted"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(v["delete_signature_verifies"], true);
    assert_eq!(v["deleted_signature_verifies"], true);
    let v = get_json(&c, &format!("{}/api/reservations/4-1", s.url)).await;
    let big = v["data"]["big"].as_str().unwrap();
    assert!(
        big.len() < 1100 && big.ends_with("[truncated: 60000 bytes in all]"),
        "{big}"
    );

    let v = get_json(&c, &format!("{}/api/users/{}", s.url, f.user.id())).await;
    assert_eq!(v["reservations"].as_array().unwrap().len(), 6);
    assert_eq!(v["reservations"][0]["node_id"], node);
    let v = get_json(&c, &format!("{}/api/reservations/5-1", s.url)).await;
    assert_eq!(v["data"]["cluster_secret"], "<sealed>");
    assert_eq!(v["result"]["signature_verifies"], true);

    for path in [
        "/api/reservations/9-1",
        "/api/nodes/nobody",
        "/ui/reservations/9-1",
        "/ui/nodes/x",
    ] {
        assert_eq!(get(&c, &format!("{}{path}", s.url)).await.0, 404, "{path}");
    }
    s.stop().await;
}

#[tokio::test]
async fn pages_escape_what_users_signed_and_carry_a_csp() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(1)).await;
    let c = reqwest::Client::new();
    let f = fleet(&c, &s.url).await;

    let (st, h, page) = get(&c, &format!("{}/ui/reservations/4-1", s.url)).await;
    assert_eq!(st, 200);
    assert_eq!(h["content-security-policy"], CSP);
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    // The only script is the external one.
    assert_eq!(
        page.matches("<script").count(),
        1,
        "{}",
        &page[..2000.min(page.len())]
    );
    assert!(page.contains(r#"<script src="/ui/app.js" defer></script>"#));
    assert!(!page.contains("<img"));
    assert!(page.contains("&lt;script&gt;window.pwned=1;"));
    assert!(page.contains("&lt;img src=x onerror="));
    assert!(page.contains("&lt;/pre&gt;&lt;/main&gt;"));
    assert!(page.contains("[truncated: 60000 bytes in all]"));
    assert!(page.len() < 20_000, "{} bytes", page.len());

    let (_, _, page) = get(&c, &format!("{}/ui/reservations/2-1", s.url)).await;
    assert!(page.contains("&lt;sealed&gt;"));
    assert!(!page.contains("c0ffee00") && !page.contains("abad1dea"));
    assert!(page.contains("image &lt;b&gt;not&lt;/b&gt; found"));
    assert!(page.contains("node signature verifies"));
    assert!(page.contains("user signature verifies"));
    let (_, _, page) = get(&c, &format!("{}/ui/reservations/3-1", s.url)).await;
    assert!(page.contains("deleted: node confirmation verifies"));
    assert!(page.contains("delete signature verifies"));
    assert!(!page.contains("feedbeef"));

    let (st, _, page) = get(&c, &format!("{}/ui/", s.url)).await;
    assert_eq!(st, 200);
    assert!(page.contains(&format!(r#"title="{}""#, f.node.id())));
    assert!(page.contains(NODE_URL));
    assert_eq!(
        page.matches("<svg class=\"bar\"").count(),
        8,
        "4 totals + 4 of the node"
    );
    let (st, _, page) = get(
        &c,
        &format!(
            "{}/ui/nodes/{}?state=error&type=%3Cx%3E",
            s.url,
            f.node.id()
        ),
    )
    .await;
    assert_eq!(st, 200);
    assert!(page.contains("No reservation."));
    assert!(page.contains("data-api=\"/api/nodes/"));
    assert!(page.contains("type=%3Cx%3E\""));
    assert!(page.contains("<polyline class=\"cpu\""));
    let (_, _, page) = get(&c, &format!("{}/ui/users/{}", s.url, f.user.id())).await;
    assert_eq!(page.matches("<tr data-id=").count(), 6);
    // A hostile id in a path is escaped too.
    let (st, _, page) = get(&c, &format!("{}/ui/users/%3Cscript%3Ex", s.url)).await;
    assert_eq!(st, 200);
    assert!(page.contains("&lt;script&gt;x") && page.matches("<script").count() == 1);

    let (st, h, js) = get(&c, &format!("{}/ui/app.js", s.url)).await;
    assert_eq!(st, 200);
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert!(js.contains("data-api") && js.len() < 8192);
    let (st, h, _) = get(&c, &format!("{}/ui/app.css", s.url)).await;
    assert_eq!(
        (st, h["content-type"].to_str().unwrap()),
        (200, "text/css; charset=utf-8")
    );
    s.stop().await;
}

// ------------------------------------------------------------- browser

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn until_up(url: &str) {
    let c = reqwest::Client::new();
    for _ in 0..250 {
        if c.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    panic!("{url} did not answer within 10 s");
}

async fn js(b: &fantoccini::Client, script: &str) -> Value {
    b.execute(script, vec![]).await.unwrap()
}

async fn assert_not_pwned(b: &fantoccini::Client, page: &str) {
    let v = js(b, "return [typeof window.pwned, document.title];").await;
    assert_eq!(v[0], "undefined", "{page}: an injected script ran");
    assert!(!v[1].as_str().unwrap().contains("pwned"), "{page}: {v}");
}

async fn assert_fits(b: &fantoccini::Client, page: &str) {
    let v = js(
        b,
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth, window.innerWidth];",
    )
    .await;
    let (scroll, client) = (v[0].as_u64().unwrap(), v[1].as_u64().unwrap());
    assert!(
        client <= 390,
        "{page}: the viewport is {v} wide, not 390 px"
    );
    if scroll > client {
        // Name the elements that stick out, for the failure message.
        let wide = js(
            b,
            "return Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5).slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right));",
        )
        .await;
        panic!("{page}: the body overflows at 390 px: {v}; too wide: {wide}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_fleet_page_live_refresh_no_injection_and_narrow_screens() {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists(),
        "{CHROMEDRIVER} is missing: run scripts/test.sh, or apt-get install chromium chromium-driver"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _explorer = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_explorer"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(dir.path().join("db"))
            .env_remove("EXPLORER_DATABASE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    until_up(&format!("{url}/health")).await;
    let c = reqwest::Client::new();
    let f = fleet(&c, &url).await;

    let wd_port = free_port();
    let _driver = Child(
        std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={wd_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let wd = format!("http://127.0.0.1:{wd_port}");
    until_up(&format!("{wd}/status")).await;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,860"]}),
    );
    // Plain HTTP to chromedriver on loopback: no TLS.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let b = fantoccini::ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&wd)
        .await
        .expect("chromedriver starts a headless chromium session");

    // The fleet: the node, its URL, its bars (cpu 2 of 8 = 25 %).
    b.goto(&format!("{url}/ui/")).await.unwrap();
    let row = b
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(fantoccini::Locator::Css("#nodes tbody tr"))
        .await
        .unwrap();
    let text = row.text().await.unwrap();
    assert!(text.contains(NODE_URL) && text.contains("2/8"), "{text}");
    let link = b
        .find(fantoccini::Locator::Css("#nodes a.id"))
        .await
        .unwrap();
    assert_eq!(
        link.attr("title").await.unwrap().as_deref(),
        Some(f.node.id())
    );
    let widths = js(
        &b,
        "return Array.from(document.querySelectorAll('#nodes rect.fill')).map(r => r.getAttribute('width'));",
    )
    .await;
    assert_eq!(widths, json!(["25.0", "25.0", "20.0", "20.0"]));
    let bar = js(
        &b,
        "return document.querySelector('#nodes svg.bar').getBoundingClientRect().width;",
    )
    .await;
    assert!(bar.as_f64().unwrap() > 40.0, "bars are drawn: {bar}");
    assert!(b.title().await.unwrap().starts_with("Fleet"));
    assert_not_pwned(&b, "/ui/").await;
    if std::env::var("UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let png = b.screenshot().await.unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dashboard.png");
        std::fs::write(path, png).unwrap();
    }

    // Live: a reservation posted while the node page is open shows up
    // within 3 s, without reloading (the marker set on the page stays).
    b.goto(&format!("{url}/ui/nodes/{}", f.node.id()))
        .await
        .unwrap();
    b.wait()
        .for_element(fantoccini::Locator::Css("tr[data-id='4-1']"))
        .await
        .unwrap();
    js(&b, "window.notReloaded = true; return null;").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let k8s = r#"{"size":1,"network_id":"n","ip":"10.1.1.2","cluster_secret":"00"}"#;
    let t = Instant::now();
    post_as(
        &c,
        &url,
        &signed(&f.user, f.node.id(), "kubernetes", k8s, Utc::now(), 600),
    )
    .await;
    b.wait()
        .at_most(Duration::from_secs(3))
        .for_element(fantoccini::Locator::Css("tr[data-id='7-1']"))
        .await
        .expect("the new reservation appears within 3 s");
    eprintln!("live refresh showed 7-1 after {:?}", t.elapsed());
    assert_eq!(
        js(&b, "return window.notReloaded === true;").await,
        json!(true)
    );
    assert_not_pwned(&b, "/ui/nodes").await;

    // The hostile reservation renders as text; nothing it carries runs.
    b.goto(&format!("{url}/ui/reservations/4-1")).await.unwrap();
    let pre = b.find(fantoccini::Locator::Css("pre.data")).await.unwrap();
    let text = pre.text().await.unwrap();
    assert!(
        text.contains("<script>window.pwned=1;"),
        "{}",
        &text[..300.min(text.len())]
    );
    assert!(text.contains("[truncated: 60000 bytes in all]"));
    assert_eq!(
        js(&b, "return document.querySelectorAll('script').length;").await,
        1
    );
    assert_eq!(
        js(&b, "return document.querySelectorAll('main img').length;").await,
        0
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_not_pwned(&b, "/ui/reservations/4-1").await;

    // The error result and the deletion.
    b.goto(&format!("{url}/ui/reservations/2-1")).await.unwrap();
    let result = b
        .find(fantoccini::Locator::Css("#result"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        result.contains("node signature verifies") && result.contains("image <b>not</b> found"),
        "{result}"
    );
    b.goto(&format!("{url}/ui/reservations/3-1")).await.unwrap();
    let del = b
        .find(fantoccini::Locator::Css("#deletion"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(del.contains("deleted: node confirmation verifies"), "{del}");

    // 390 px wide: no page overflows horizontally.
    b.set_window_size(390, 844).await.unwrap();
    for path in [
        "/ui/".to_string(),
        format!("/ui/nodes/{}", f.node.id()),
        "/ui/reservations/4-1".into(),
        "/ui/reservations/2-1".into(),
        format!("/ui/users/{}", f.user.id()),
    ] {
        b.goto(&format!("{url}{path}")).await.unwrap();
        assert_fits(&b, &path).await;
        assert_not_pwned(&b, &path).await;
    }
    b.close().await.unwrap();
}
