//! Networks that span nodes, over WireGuard, end to end on this machine:
//! a remote node stood in for by a userspace WireGuard peer (wireguard-go)
//! in its own network namespace, joined to the host by a veth pair. The
//! agent's userspace tunnel (boringtun) carries a container's TCP to it;
//! the container cannot reach the host, another user's network or the
//! default bridge; a restart brings the tunnel back; a new reservation of
//! the name changes the peers in place; deletion removes the interface,
//! routes, rule and chains, and the leftovers of a network gone while the
//! agent was down are swept at start. Needs root, Docker, /dev/net/tun,
//! `wireguard-go`, `wg` and `ip` (scripts/test.sh installs them).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::*;
use reservation::{seal_for, Identity, ResultState};
use serde_json::{json, Value};

fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `wg genkey` and `wg pubkey` of it: (private, public), base64.
fn wg_keypair() -> Result<(String, String)> {
    let private = sh("wg", &["genkey"])?;
    let mut c = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    c.stdin.take().unwrap().write_all(private.as_bytes())?;
    let out = c.wait_with_output()?;
    Ok((private, String::from_utf8(out.stdout)?.trim().to_string()))
}

/// Bytes of one throughput transfer: 256 MiB.
const SINK_BYTES: u64 = 256 << 20;

/// The sink's Python: per connection, read BYTES, append "bytes seconds"
/// (first byte to last) to OUT, close.
const SINK: &str = r#"
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7778))
s.listen(4)
while True:
    c, _ = s.accept()
    n, t = 0, None
    while n < BYTES:
        d = c.recv(1 << 20)
        if not d:
            break
        t = t or time.monotonic()
        n += len(d)
    dt = time.monotonic() - (t or time.monotonic())
    c.close()
    with open('OUT', 'a') as f:
        f.write('%d %f\n' % (n, dt))
"#;

/// The stand-in for a remote node: a namespace with wireguard-go and a TCP
/// echo on `addr`:7777, reached from the host over a veth pair.
struct RemotePeer {
    ns: String,
    veth: String,
    children: Vec<Child>,
    public: String,
    /// The peer's WireGuard endpoint, as the host reaches it.
    endpoint: String,
    /// Its address in its subnet (the echo listens there).
    addr: String,
    dir: tempfile::TempDir,
}

impl RemotePeer {
    fn start(tag: &str, k: u8, agent_subnet: &str) -> Result<RemotePeer> {
        let ns = format!("wgt{tag}");
        let veth = format!("vwh{tag}");
        let inner = format!("vwn{tag}");
        let dev = format!("wgp{tag}");
        let (host_ip, ns_ip) = (format!("10.250.{k}.1"), format!("10.250.{k}.2"));
        let dir = tempfile::tempdir()?;
        let (private, public) = wg_keypair()?;
        let keyfile = dir.path().join("key");
        std::fs::write(&keyfile, &private)?;
        let mut p = RemotePeer {
            ns: ns.clone(),
            veth: veth.clone(),
            children: Vec::new(),
            public,
            endpoint: format!("{ns_ip}:51820"),
            addr: format!("10.{k}.2.1"),
            dir,
        };
        let _ = sh("ip", &["netns", "del", &ns]);
        let _ = sh("ip", &["link", "del", &veth]);
        sh("ip", &["netns", "add", &ns])?;
        sh(
            "ip",
            &["link", "add", &veth, "type", "veth", "peer", "name", &inner],
        )?;
        sh("ip", &["link", "set", &inner, "netns", &ns])?;
        sh(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", &veth],
        )?;
        sh("ip", &["link", "set", &veth, "up"])?;
        let n = |args: &[&str]| -> Result<String> {
            let mut a = vec!["netns", "exec", &ns];
            a.extend_from_slice(args);
            sh("ip", &a)
        };
        n(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &inner])?;
        n(&["ip", "link", "set", &inner, "up"])?;
        n(&["ip", "link", "set", "lo", "up"])?;
        p.children.push(
            Command::new("ip")
                .args(["netns", "exec", &ns, "wireguard-go", "-f", &dev])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("wireguard-go")?,
        );
        let sock = format!("/var/run/wireguard/{dev}.sock");
        for _ in 0..100 {
            if std::path::Path::new(&sock).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        n(&[
            "wg",
            "set",
            &dev,
            "private-key",
            keyfile.to_str().unwrap(),
            "listen-port",
            "51820",
        ])?;
        n(&["ip", "addr", "add", &format!("{}/24", p.addr), "dev", &dev])?;
        n(&["ip", "link", "set", &dev, "up"])?;
        n(&["ip", "route", "add", agent_subnet, "dev", &dev])?;
        // The TCP echo, one line per connection.
        let echo = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('{}',7777))\ns.listen(16)\nwhile True:\n c,_=s.accept()\n d=c.recv(65536)\n c.sendall(d)\n c.close()\n",
            p.addr
        );
        p.children.push(
            Command::new("ip")
                .args(["netns", "exec", &ns, "python3", "-c", &echo])
                .spawn()
                .context("echo")?,
        );
        // A sink for the throughput figure (BENCHMARKS.md): per connection,
        // reads SINK_BYTES, appends "bytes seconds" to a file, closes.
        let sink = SINK
            .replace("BYTES", &SINK_BYTES.to_string())
            .replace("OUT", &p.dir.path().join("sink").display().to_string());
        p.children.push(
            Command::new("ip")
                .args(["netns", "exec", &ns, "python3", "-c", &sink])
                .spawn()
                .context("sink")?,
        );
        Ok(p)
    }

    /// Let the agent's interface (public key, listen port) in.
    fn allow(&self, agent_public: &str, agent_subnet: &str, agent_port: u16) -> Result<()> {
        let dev = format!("wgp{}", &self.ns[3..]);
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "wg",
                "set",
                &dev,
                "peer",
                agent_public,
                "allowed-ips",
                agent_subnet,
                "endpoint",
                &format!(
                    "10.250.{}.1:{agent_port}",
                    self.endpoint.split('.').nth(2).unwrap()
                ),
                "persistent-keepalive",
                "5",
            ],
        )?;
        Ok(())
    }
}

impl RemotePeer {
    /// Send SINK_BYTES to the sink at `ip` by `send` (a command line that
    /// runs `sh -c CMD`); Mbit/s as the sink measured it.
    fn transfer(&self, send: &[&str], ip: &str) -> Result<f64> {
        let sink = self.dir.path().join("sink");
        let before = std::fs::read_to_string(&sink)
            .unwrap_or_default()
            .lines()
            .count();
        let cmd = format!(
            "dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc {ip} 7778",
            SINK_BYTES / 65536
        );
        let mut args = send.to_vec();
        args.extend(["sh", "-c", &cmd]);
        let _ = docker(&args);
        let lines = std::fs::read_to_string(&sink).unwrap_or_default();
        let line = lines
            .lines()
            .nth(before)
            .context("the sink recorded nothing")?;
        let mut f = line.split_whitespace();
        let bytes: f64 = f.next().context("bytes")?.parse()?;
        let secs: f64 = f.next().context("secs")?.parse()?;
        if bytes < SINK_BYTES as f64 {
            bail!("the sink got {bytes} bytes of {SINK_BYTES}");
        }
        Ok(bytes * 8.0 / secs / 1e6)
    }
}

impl Drop for RemotePeer {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh("ip", &["netns", "del", &self.ns]);
        let _ = sh("ip", &["link", "del", &self.veth]);
        // wireguard-go killed leaves its UAPI socket behind.
        let _ = std::fs::remove_file(format!("/var/run/wireguard/wgp{}.sock", &self.ns[3..]));
        let _ = &self.dir;
    }
}

/// Removes what a tunnel owns on the host when a test fails half way (the
/// agent's tun dies with it; its chains and rule would not).
struct HostLeftovers(Vec<String>, Vec<String>);

impl Drop for HostLeftovers {
    fn drop(&mut self) {
        for iface in &self.0 {
            let chain = format!("AGENT-{iface}");
            for hook in ["INPUT", "FORWARD", "OUTPUT"] {
                while sh("iptables", &["-w", "5", "-D", hook, "-j", &chain]).is_ok() {}
            }
            let _ = sh("iptables", &["-w", "5", "-F", &chain]);
            let _ = sh("iptables", &["-w", "5", "-X", &chain]);
            while sh(
                "iptables",
                &["-w", "5", "-t", "nat", "-D", "POSTROUTING", "-j", &chain],
            )
            .is_ok()
            {}
            let _ = sh("iptables", &["-w", "5", "-t", "nat", "-F", &chain]);
            let _ = sh("iptables", &["-w", "5", "-t", "nat", "-X", &chain]);
        }
        // The policy rules of these networks' bridges, and their tables.
        let rules = sh("ip", &["rule"]).unwrap_or_default();
        for bridge in &self.1 {
            for l in rules
                .lines()
                .filter(|l| l.contains(&format!("iif {bridge} ")))
            {
                if let Some(table) = l.split_whitespace().skip_while(|w| *w != "lookup").nth(1) {
                    let _ = sh("ip", &["rule", "del", "iif", bridge, "lookup", table]);
                    let _ = sh("ip", &["route", "flush", "table", table]);
                }
            }
        }
    }
}

fn wg_network(
    node: &Identity,
    name: &str,
    k: u8,
    local: u8,
    port: u16,
    peers: Value,
) -> Result<(Value, String, String)> {
    let (private, public) = wg_keypair()?;
    Ok((
        json!({"name": name, "ip_range": format!("10.{k}.0.0/16"),
        "net_resources": [{
            "node_id": node.id(),
            "subnet": format!("10.{k}.{local}.0/24"),
            "wireguard_private_key_encrypted": seal_for(node.id(), private.as_bytes())?,
            "wireguard_public_key": public,
            "wireguard_listen_port": port,
            "peers": peers,
        }]}),
        public,
        private,
    ))
}

fn sleeper(net: &str, ip: &str) -> Value {
    json!({"flist": BUSYBOX, "entrypoint": "nc -ll -p 7000 -e /bin/cat",
           "network": {"network_id": net, "ips": [ip]},
           "capacity": {"cpu": 1, "memory": 64}})
}

/// From inside `container`: `REACHED` or `BLOCKED` for a TCP connect.
fn probe(container: &str, ip: &str, port: u16) -> String {
    let cmd =
        format!("echo x | nc -w 2 {ip} {port} >/dev/null 2>&1 && echo REACHED || echo BLOCKED");
    docker(&["exec", container, "sh", "-c", &cmd]).unwrap_or_else(|e| format!("exec failed: {e}"))
}

fn echo_through(container: &str, ip: &str) -> Option<String> {
    docker(&[
        "exec",
        container,
        "sh",
        "-c",
        &format!("echo hello-peer | nc -w 3 {ip} 7777"),
    ])
    .ok()
    .filter(|s| s == "hello-peer")
}

/// Owned by the tunnel of `iface` on the host: link, rules, chains.
fn host_state(iface: &str) -> Result<String> {
    let mut s = String::new();
    s += &sh("ip", &["-o", "link", "show"])?;
    s += &sh("ip", &["rule"])?;
    s += &sh("ip", &["route", "show", "table", "all"])?;
    s += &sh("iptables", &["-w", "5", "-S"])?;
    s += &sh("iptables", &["-w", "5", "-t", "nat", "-S"])?;
    Ok(s.lines()
        .filter(|l| l.contains(iface))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The Linux bridge of the Docker network of reservation `id`.
fn bridge_of(node: &str, id: &str) -> Result<String> {
    let names = docker(&[
        "network",
        "ls",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=io.agent.node={node}"),
        "--filter",
        &format!("label=io.agent.reservation={id}"),
    ])?;
    let net = names.lines().next().context("no docker network")?;
    Ok(format!("br-{}", &net[..12]))
}

fn docker_net_label(node: &str, id: &str, label: &str) -> Result<String> {
    let names = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label=io.agent.node={node}"),
        "--filter",
        &format!("label=io.agent.reservation={id}"),
    ])?;
    let net = names
        .lines()
        .next()
        .context("no docker network")?
        .to_string();
    docker(&[
        "network",
        "inspect",
        "-f",
        &format!("{{{{index .Labels \"{label}\"}}}}"),
        &net,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_reaches_a_remote_peer_through_the_tunnel_and_nothing_else() -> Result<()> {
    ensure_images();
    let k = 120 + (std::process::id() % 100) as u8;
    let tag = format!("{:04x}", std::process::id() % 0xffff);
    let agent_subnet = format!("10.{k}.1.0/24");
    let peer = RemotePeer::start(&tag, k, &agent_subnet)?;

    let explorer = Explorer::start().await?;
    let mut agent = Agent::start(&explorer.url).await?;
    let node = agent.node();
    let hour = Duration::from_secs(3600);
    let (alice, bob) = (Identity::generate(), Identity::generate());

    // Alice's network: this node's share 10.k.1/24, the peer's 10.k.2/24.
    let port = free_port();
    let peers = json!([{"subnet": format!("10.{k}.2.0/24"), "wireguard_public_key": peer.public,
                        "allowed_ips": [format!("10.{k}.2.0/24")], "endpoint": peer.endpoint}]);
    let (data, agent_public, agent_private) = wg_network(&node, "mesh", k, 1, port, peers)?;
    peer.allow(&agent_public, &agent_subnet, port)?;
    let net_a = explorer
        .reserve(&alice, node.id(), "network", data, hour)
        .await?;
    let res = explorer.wait_result(&net_a).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    let iface = docker_net_label(node.id(), &net_a, "io.agent.wireguard")?;
    assert!(iface.starts_with("wg"), "{iface}");
    let mut leftovers = HostLeftovers(vec![iface.clone()], vec![bridge_of(node.id(), &net_a)?]);

    // Bob's network claims the same peer subnet, through a tunnel to a
    // peer that does not answer: it must never reach Alice's peer.
    let peers_b = json!([{"wireguard_public_key": wg_keypair()?.1,
                          "allowed_ips": [format!("10.{k}.2.0/24")],
                          "endpoint": format!("10.250.{k}.2:51999")}]);
    let (data_b, _, _) = wg_network(&node, "mesh", k, 3, free_port(), peers_b)?;
    let net_b = explorer
        .reserve(&bob, node.id(), "network", data_b, hour)
        .await?;
    let res = explorer.wait_result(&net_b).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    leftovers
        .0
        .push(docker_net_label(node.id(), &net_b, "io.agent.wireguard")?);
    leftovers.1.push(bridge_of(node.id(), &net_b)?);

    let ct_a = explorer
        .reserve(
            &alice,
            node.id(),
            "container",
            sleeper("mesh", &format!("10.{k}.1.10")),
            hour,
        )
        .await?;
    let ct_b = explorer
        .reserve(
            &bob,
            node.id(),
            "container",
            sleeper("mesh", &format!("10.{k}.3.10")),
            hour,
        )
        .await?;
    let mut cids = Vec::new();
    for id in [&ct_a, &ct_b] {
        let res = explorer.wait_result(id).await?;
        assert_eq!(res.state, ResultState::Ok, "{}", res.error);
        let d: Value = serde_json::from_str(res.data.get())?;
        cids.push(d["id"].as_str().unwrap().to_string());
    }
    let (a, b) = (cids[0].clone(), cids[1].clone());

    // Through the tunnel to the remote peer.
    let got = wait_for(
        "an echo from the peer through the tunnel",
        Duration::from_secs(40),
        || async { echo_through(&a, &peer.addr) },
    )
    .await?;
    assert_eq!(got, "hello-peer");
    let status = agent.status()?;
    assert!(
        status["wireguard"]
            .as_str()
            .unwrap()
            .starts_with("userspace"),
        "{status}"
    );
    let (_, text, _) = agent.ctl(&["status"])?;
    assert!(
        text.contains("wireguard") && text.contains("userspace"),
        "{text}"
    );

    // Throughput (BENCHMARKS.md): WG_BENCH_OUT=FILE appends the figures.
    if let Ok(out) = std::env::var("WG_BENCH_OUT") {
        let mut lines = Vec::new();
        for run in 1..=3 {
            let tunnel = peer.transfer(&["exec", &a], &peer.addr)?;
            let veth = peer.transfer(&["run", "--rm", BUSYBOX], &format!("10.250.{k}.2"))?;
            lines.push(format!(
                "busybox dd|nc run {run}: tunnel {tunnel:.0} Mbit/s, plain veth {veth:.0} Mbit/s"
            ));
        }
        // iperf3 (Debian's, from the host) run in the containers' network
        // namespaces, against iperf3 in the peer's namespace.
        let plain = docker(&["run", "-d", "--rm", BUSYBOX, "sleep", "300"])?;
        let mut server = Command::new("ip")
            .args(["netns", "exec", &peer.ns, "iperf3", "-s"])
            .stdout(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(500));
        let iperf = |cid: &str, ip: &str| -> Result<f64> {
            let pid = docker(&["inspect", "-f", "{{.State.Pid}}", cid])?;
            let out = sh(
                "nsenter",
                &["-t", &pid, "-n", "iperf3", "-c", ip, "-t", "10", "-J"],
            )?;
            let v: Value = serde_json::from_str(&out)?;
            v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .map(|b| b / 1e6)
                .context("iperf3 json")
        };
        for run in 1..=3 {
            let tunnel = iperf(&a, &peer.addr)?;
            let veth = iperf(&plain, &format!("10.250.{k}.2"))?;
            lines.push(format!(
                "iperf3 run {run}: tunnel {tunnel:.0} Mbit/s, plain veth {veth:.0} Mbit/s"
            ));
        }
        let _ = server.kill();
        let _ = server.wait();
        let _ = docker(&["rm", "-f", &plain]);
        std::fs::write(&out, lines.join("\n") + "\n")?;
    }

    // Nothing of the host: a listener on every host address, reached from
    // a container on the default bridge (the control) but not from Alice's.
    let listener = TcpListener::bind("0.0.0.0:0")?;
    let hport = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            let mut c = c;
            let mut b = [0u8; 8];
            let _ = c.read(&mut b);
        }
    });
    let route = sh("ip", &["-4", "route", "get", "1.1.1.1"])?;
    let host_ip = route
        .split_whitespace()
        .skip_while(|w| *w != "src")
        .nth(1)
        .context("src")?
        .to_string();
    let gw = format!("10.{k}.1.1");
    let control = docker(&[
        "run",
        "--rm",
        BUSYBOX,
        "sh",
        "-c",
        &format!(
            "echo x | nc -w 2 {host_ip} {hport} >/dev/null 2>&1 && echo REACHED || echo BLOCKED"
        ),
    ])?;
    assert_eq!(
        control, "REACHED",
        "the default bridge reaches the host: the probe works"
    );
    for ip in [
        host_ip.as_str(),
        gw.as_str(),
        "172.17.0.1",
        &format!("10.250.{k}.1"),
    ] {
        assert_eq!(
            probe(&a, ip, hport),
            "BLOCKED",
            "alice's container reached host address {ip}"
        );
    }
    // Nor Bob's network, nor the default bridge, in either direction.
    assert_eq!(
        probe(&a, &format!("10.{k}.3.10"), 7000),
        "BLOCKED",
        "alice reached bob"
    );
    assert_eq!(
        probe(&b, &format!("10.{k}.1.10"), 7000),
        "BLOCKED",
        "bob reached alice"
    );
    let from_default = docker(&[
        "run",
        "--rm",
        BUSYBOX,
        "sh",
        "-c",
        &format!(
            "echo x | nc -w 2 10.{k}.1.10 7000 >/dev/null 2>&1 && echo REACHED || echo BLOCKED"
        ),
    ])?;
    assert_eq!(from_default, "BLOCKED", "the default bridge reached alice");
    // Bob's overlapping peer subnet goes into Bob's own tunnel only.
    assert!(
        echo_through(&b, &peer.addr).is_none(),
        "bob reached alice's peer"
    );

    // A port already taken and an endpoint that does not resolve: signed
    // errors, nothing left behind.
    let carol = Identity::generate();
    let taken = json!([{"wireguard_public_key": wg_keypair()?.1, "allowed_ips": [format!("10.{k}.5.0/24")], "endpoint": ""}]);
    let (d, _, _) = wg_network(&node, "taken", k, 4, port, taken)?;
    let (bad_port, error) = refused(&explorer, &carol, &node, d).await?;
    assert!(
        error.contains(&format!(
            "wireguard_listen_port {port} cannot be used on this node"
        )),
        "{error}"
    );
    let nowhere = json!([{"wireguard_public_key": wg_keypair()?.1, "allowed_ips": [format!("10.{k}.5.0/24")], "endpoint": "peer.invalid:51820"}]);
    let (d, _, _) = wg_network(&node, "nowhere", k, 6, free_port(), nowhere)?;
    let (bad_ep, error) = refused(&explorer, &carol, &node, d).await?;
    assert!(
        error.starts_with(
            "data.net_resources[0].peers[0].endpoint: \"peer.invalid:51820\" does not resolve"
        ),
        "{error}"
    );
    // A tenant tries to route the host's own link to the peer (a host
    // route) into its tunnel.
    let hijack = json!([{"wireguard_public_key": wg_keypair()?.1,
                         "allowed_ips": [format!("10.250.{k}.0/24")], "endpoint": ""}]);
    let (mut d, _, _) = wg_network(&node, "hijack", k, 8, free_port(), hijack)?;
    d["ip_range"] = json!("10.0.0.0/8");
    let (bad_route, error) = refused(&explorer, &carol, &node, d).await?;
    assert_eq!(
        error,
        format!("data.net_resources[0].peers[0].allowed_ips: range 10.250.{k}.0/24 overlaps the host route 10.250.{k}.0/30 (vwh{tag})")
    );
    // A key that does not open to a WireGuard key.
    let (mut d, _, _) = wg_network(&node, "badkey", k, 9, free_port(), json!([]))?;
    d["net_resources"][0]["wireguard_private_key_encrypted"] =
        json!(seal_for(node.id(), b"not a key")?);
    let (bad_key, error) = refused(&explorer, &carol, &node, d).await?;
    assert_eq!(
        error,
        "data.net_resources[0].wireguard_private_key_encrypted: does not open to a 32-byte key in base64"
    );
    // An endpoint the node has no route to (an `unreachable` route for a
    // TEST-NET address, removed by the guard).
    let blackhole = format!("192.0.2.{}", 100 + k % 100);
    sh(
        "ip",
        &["route", "add", "unreachable", &format!("{blackhole}/32")],
    )?;
    struct Unroute(String);
    impl Drop for Unroute {
        fn drop(&mut self) {
            let _ = sh(
                "ip",
                &["route", "del", "unreachable", &format!("{}/32", self.0)],
            );
        }
    }
    let unroute = Unroute(blackhole.clone());
    let cut = json!([{"wireguard_public_key": wg_keypair()?.1, "allowed_ips": [format!("10.{k}.5.0/24")],
                      "endpoint": format!("{blackhole}:51820")}]);
    let (d, _, _) = wg_network(&node, "cut", k, 10, free_port(), cut)?;
    let (bad_reach, error) = refused(&explorer, &carol, &node, d).await?;
    drop(unroute);
    assert!(
        error.starts_with(&format!(
            "data.net_resources: wireguard tunnel of reservation {bad_reach}: peer endpoint {blackhole}:51820 is unreachable from this node"
        )),
        "{error}"
    );
    for id in [&bad_port, &bad_ep, &bad_route, &bad_key, &bad_reach] {
        let (c, v, n) = labelled(node.id(), id);
        assert!(
            c.is_empty() && v.is_empty() && n.is_empty(),
            "{id} left {n:?}"
        );
    }

    // Kill the agent: its tunnel dies with it. Starting it again brings it back.
    agent.kill9();
    wait_for(
        "the tunnel to die with the agent",
        Duration::from_secs(10),
        || async { sh("ip", &["link", "show", &iface]).is_err().then_some(()) },
    )
    .await?;
    assert!(echo_through(&a, &peer.addr).is_none());
    agent.spawn().await?;
    let got = wait_for(
        "the echo again after a restart",
        Duration::from_secs(60),
        || async { echo_through(&a, &peer.addr) },
    )
    .await?;
    assert_eq!(got, "hello-peer");
    assert_eq!(
        probe(&a, &host_ip, hport),
        "BLOCKED",
        "isolation is back too"
    );

    // The plaintext key is nowhere on disk under the agent's root (the
    // cache keeps it sealed) nor in its log.
    assert!(
        !agent.log().contains(&agent_private),
        "private key in the log"
    );
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    files(&agent.root, &mut all);
    let needle = agent_private.as_bytes();
    for f in all {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "private key in {}",
            f.display()
        );
    }

    // Deleting the network (its container first) removes the interface,
    // routes, rule and chains.
    assert!(!host_state(&iface)?.is_empty());
    assert!(sh("ip", &["rule"])?.contains(&format!("iif {} ", leftovers.1[0])));
    for id in [&ct_a, &net_a] {
        assert_eq!(explorer.delete_as(&alice, id).await?, 200);
        explorer.wait_deleted(id).await?;
    }
    assert_eq!(host_state(&iface)?, "", "what the tunnel owned is gone");
    let bridge_a = leftovers.1[0].clone();
    assert!(
        !sh("ip", &["rule"])?.contains(&format!("iif {bridge_a} ")),
        "the policy rule of the deleted network's bridge is gone"
    );
    let chain = format!("AGENT-{iface}");
    assert!(!sh("iptables", &["-w", "5", "-S"])?.contains(&chain));

    // Changing the peers: the old network deleted, a new signed one of the
    // same name (a new key, a new port) takes its place.
    let port2 = free_port();
    let peers = json!([{"subnet": format!("10.{k}.2.0/24"), "wireguard_public_key": peer.public,
                        "allowed_ips": [format!("10.{k}.2.0/24")], "endpoint": peer.endpoint}]);
    let (data, public2, _) = wg_network(&node, "mesh", k, 1, port2, peers)?;
    peer.allow(&public2, &agent_subnet, port2)?;
    let net_a2 = explorer
        .reserve(&alice, node.id(), "network", data, hour)
        .await?;
    let res = explorer.wait_result(&net_a2).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    leftovers.1.push(bridge_of(node.id(), &net_a2)?);
    let ct_a2 = explorer
        .reserve(
            &alice,
            node.id(),
            "container",
            sleeper("mesh", &format!("10.{k}.1.11")),
            hour,
        )
        .await?;
    let res = explorer.wait_result(&ct_a2).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    let d: Value = serde_json::from_str(res.data.get())?;
    let a2 = d["id"].as_str().unwrap().to_string();
    let got = wait_for(
        "the echo through the new network",
        Duration::from_secs(40),
        || async { echo_through(&a2, &peer.addr) },
    )
    .await?;
    assert_eq!(got, "hello-peer");

    // Changing the peers in place: a new signed reservation of the same
    // name and subnet while the old one lives, with a new key, port and
    // peer (a second remote node). It takes the network over: the
    // container stays attached, reaches the new peer, no longer the old.
    let k2 = k + 30;
    let peer2 = RemotePeer::start(&format!("{tag}b"), k2, &agent_subnet)?;
    let port3 = free_port();
    let peers = json!([{"subnet": format!("10.{k2}.2.0/24"), "wireguard_public_key": peer2.public,
                        "allowed_ips": [format!("10.{k2}.2.0/24")], "endpoint": peer2.endpoint}]);
    let (mut data, public3, _) = wg_network(&node, "mesh", k, 1, port3, peers)?;
    data["ip_range"] = json!("10.0.0.0/8");
    peer2.allow(&public3, &agent_subnet, port3)?;
    let net_a3 = explorer
        .reserve(&alice, node.id(), "network", data, hour)
        .await?;
    let res = explorer.wait_result(&net_a3).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    let got = wait_for(
        "the echo from the new peer after the update",
        Duration::from_secs(40),
        || async { echo_through(&a2, &peer2.addr) },
    )
    .await?;
    assert_eq!(got, "hello-peer");
    assert!(
        echo_through(&a2, &peer.addr).is_none(),
        "the old peer is still reached after the update"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &a2])?,
        "true",
        "the container on the network stayed"
    );
    // The old reservation deleted: the network, the container and the
    // tunnel to the new peer stay.
    assert_eq!(explorer.delete_as(&alice, &net_a2).await?, 200);
    explorer.wait_deleted(&net_a2).await?;
    assert_eq!(
        echo_through(&a2, &peer2.addr).as_deref(),
        Some("hello-peer"),
        "the old reservation's end took the network"
    );
    assert!(sh("ip", &["link", "show", &iface]).is_ok());
    // The new one deleted (its container first): everything goes.
    for id in [&ct_a2, &net_a3] {
        assert_eq!(explorer.delete_as(&alice, id).await?, 200);
        explorer.wait_deleted(id).await?;
    }
    assert_eq!(host_state(&iface)?, "", "what the tunnel owned is gone");
    drop(leftovers);
    Ok(())
}

/// Tunnel leftovers no network accounts for (the Docker network went
/// while the agent was down, its reservation was deleted meanwhile) are
/// removed at start; another agent's tunnel chain and rules that are not
/// ours stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_network_gone_while_the_agent_was_down_are_swept_at_start() -> Result<()> {
    ensure_images();
    let k = 20 + (std::process::id() % 90) as u8;
    let explorer = Explorer::start().await?;
    let mut agent = Agent::start(&explorer.url).await?;
    let node = agent.node();
    let alice = Identity::generate();
    let peers = json!([{"wireguard_public_key": wg_keypair()?.1,
                        "allowed_ips": [format!("10.{k}.2.0/24")], "endpoint": ""}]);
    let (data, _, _) = wg_network(&node, "gone", k, 1, free_port(), peers)?;
    let id = explorer
        .reserve(
            &alice,
            node.id(),
            "network",
            data,
            Duration::from_secs(3600),
        )
        .await?;
    let res = explorer.wait_result(&id).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    let iface = docker_net_label(node.id(), &id, "io.agent.wireguard")?;
    let bridge = bridge_of(node.id(), &id)?;
    let _cleanup = HostLeftovers(vec![iface.clone()], vec![bridge.clone()]);
    let chain = format!("AGENT-{iface}");

    // Not ours: another agent's marked chain, a policy rule of another
    // priority, an unmarked chain of our shape.
    let other = "wgOtherAgent123";
    let unmarked = "wgUnmarkedX1234";
    let _others = HostLeftovers(vec![other.into(), unmarked.into()], vec![]);
    let ipt = |args: &[&str]| -> Result<String> {
        let mut a = vec!["-w", "5"];
        a.extend_from_slice(args);
        sh("iptables", &a)
    };
    ipt(&["-N", &format!("AGENT-{other}")])?;
    ipt(&[
        "-A",
        &format!("AGENT-{other}"),
        "-m",
        "comment",
        "--comment",
        "agent-owner=another-node",
    ])?;
    ipt(&["-I", "FORWARD", "1", "-j", &format!("AGENT-{other}")])?;
    ipt(&["-N", &format!("AGENT-{unmarked}")])?;
    let other_table = (0x1000_0000u32 + 4242 + k as u32).to_string();
    sh(
        "ip",
        &[
            "rule",
            "add",
            "iif",
            "vwhnone",
            "lookup",
            &other_table,
            "priority",
            "1001",
        ],
    )?;
    sh(
        "ip",
        &[
            "route",
            "add",
            "unreachable",
            "default",
            "table",
            &other_table,
        ],
    )?;

    // The agent dies; meanwhile its Docker network goes, its reservation
    // is deleted, and its cache is lost (a node reinstalled on the same
    // host): nothing it knows of accounts for the chain, rule and table
    // left behind.
    agent.kill9();
    docker(&["network", "rm", &docker_net_name(node.id(), &id)?])?;
    assert_eq!(explorer.delete_as(&alice, &id).await?, 200);
    for e in std::fs::read_dir(&agent.root)?.flatten() {
        if e.file_name() != "node.seed" {
            let p = e.path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
    assert!(ipt(&["-S"])?.contains(&format!("-N {chain}")));
    assert!(sh("ip", &["rule"])?.contains(&format!("iif {bridge} ")));

    agent.spawn().await?;
    wait_for(
        "the sweep of the leftovers",
        Duration::from_secs(60),
        || async { host_state(&iface).ok().filter(|s| s.is_empty()) },
    )
    .await
    .with_context(|| format!("agent log:\n{}", agent.log()))?;
    assert!(!sh("ip", &["rule"])?.contains(&format!("iif {bridge} ")));
    assert!(!ipt(&["-t", "nat", "-S"])?.contains(&chain));
    assert!(
        agent.log().contains("removed wireguard leftovers"),
        "the sweep did it"
    );
    // What is not ours is untouched.
    let rules = ipt(&["-S"])?;
    assert!(rules.contains(&format!("-N AGENT-{other}")), "{rules}");
    assert!(rules.contains(&format!("-A FORWARD -j AGENT-{other}")));
    assert!(rules.contains(&format!("-N AGENT-{unmarked}")));
    assert!(sh("ip", &["rule"])?.contains(&format!("lookup {other_table}")));
    let _ = sh(
        "ip",
        &["rule", "del", "priority", "1001", "lookup", &other_table],
    );
    let _ = sh("ip", &["route", "flush", "table", &other_table]);
    Ok(())
}

/// Issue 16 follow-up: the holder of a taken-over network deleted while
/// the reservation it replaced lives. The network and its tunnel go, and a
/// restart does not bring them back with the old key and peers:
/// reconciliation finds the old reservation ended with the network, not
/// missing. Its own end later is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_deleted_with_its_holder_stays_gone_after_a_restart() -> Result<()> {
    ensure_images();
    let k = 110 + (std::process::id() % 10) as u8;
    let explorer = Explorer::start().await?;
    let mut agent = Agent::start(&explorer.url).await?;
    let node = agent.node();
    let alice = Identity::generate();
    let hour = Duration::from_secs(3600);
    let peers = || -> Result<Value> {
        Ok(json!([{"wireguard_public_key": wg_keypair()?.1,
                   "allowed_ips": [format!("10.{k}.2.0/24")], "endpoint": ""}]))
    };
    let (data, _, _) = wg_network(&node, "ended", k, 1, free_port(), peers()?)?;
    let old = explorer
        .reserve(&alice, node.id(), "network", data, hour)
        .await?;
    let res = explorer.wait_result(&old).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    let iface = docker_net_label(node.id(), &old, "io.agent.wireguard")?;
    let bridge = bridge_of(node.id(), &old)?;
    let _cleanup = HostLeftovers(vec![iface.clone()], vec![bridge]);
    let name = docker_net_name(node.id(), &old)?;

    // A new reservation of the name and subnet takes it over, then goes.
    let (data, _, _) = wg_network(&node, "ended", k, 1, free_port(), peers()?)?;
    let new = explorer
        .reserve(&alice, node.id(), "network", data, hour)
        .await?;
    let res = explorer.wait_result(&new).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    assert_eq!(explorer.delete_as(&alice, &new).await?, 200);
    explorer.wait_deleted(&new).await?;
    assert!(docker(&["network", "inspect", &name]).is_err());
    assert_eq!(host_state(&iface)?, "", "what the tunnel owned is gone");

    // A restart: reconciliation is done once the agent is ready.
    agent.kill9();
    agent.spawn().await?;
    assert!(
        docker(&["network", "inspect", &name]).is_err(),
        "the old reservation's network came back; agent log:\n{}",
        agent.log()
    );
    assert_eq!(host_state(&iface)?, "", "its tunnel came back");

    assert_eq!(explorer.delete_as(&alice, &old).await?, 200);
    explorer.wait_deleted(&old).await?;
    assert!(docker(&["network", "inspect", &name]).is_err());
    Ok(())
}

/// Reserve network `data` as `user` for an hour; its result must be an
/// error signed by `node`. The reservation's id and the error.
async fn refused(
    explorer: &Explorer,
    user: &Identity,
    node: &Identity,
    data: Value,
) -> Result<(String, String)> {
    let id = explorer
        .reserve(user, node.id(), "network", data, Duration::from_secs(3600))
        .await?;
    let res = explorer.wait_result(&id).await?;
    assert_eq!(res.state, ResultState::Error, "{id}");
    explorer.verify(&res, node.id()).await?;
    Ok((id, res.error))
}

/// The name of the Docker network of reservation `id`.
fn docker_net_name(node: &str, id: &str) -> Result<String> {
    let names = docker(&[
        "network",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        &format!("label=io.agent.node={node}"),
        "--filter",
        &format!("label=io.agent.reservation={id}"),
    ])?;
    Ok(names
        .lines()
        .next()
        .context("no docker network")?
        .to_string())
}
