//! `explorer nodes`: the node table (id, URL, last heartbeat, used/total
//! per resource), flagging URLs other nodes cannot reach.

use chrono::{DateTime, Utc};
use reqwest::Url;
use reservation::NodeInfo;

/// "8s ago", "3m ago", "2h ago", "4d ago"; "never" before the first one.
pub fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    // A heartbeat "from the future" is clock skew between hosts: show 0s.
    let s = (now - t).num_seconds().max(0);
    match s {
        i64::MIN..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Whether the URL's host is a loopback address (or `localhost`), which
/// only the node itself can reach.
pub fn is_loopback(url: &str) -> bool {
    let parsed = Url::parse(url)
        .ok()
        .filter(|u| u.host().is_some())
        .or_else(|| Url::parse(&format!("http://{url}")).ok());
    let Some(host) = parsed.as_ref().and_then(|u| u.host_str()) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let d = host.to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
    }
}

/// The aligned table.
pub fn table(nodes: &[NodeInfo], now: DateTime<Utc>) -> String {
    let mut rows: Vec<Vec<String>> = vec![[
        "NODE ID",
        "URL",
        "LAST HEARTBEAT",
        "CPU",
        "MEM GiB",
        "SSD GiB",
        "HDD GiB",
        "",
    ]
    .map(String::from)
    .to_vec()];
    for n in nodes {
        let ut = |u: f64, t: f64| format!("{}/{}", num(u), num(t));
        rows.push(vec![
            n.node_id.clone(),
            n.url.clone(),
            ago(n.last_heartbeat, now),
            ut(n.used.cru, n.capacity.cru),
            ut(n.used.mru, n.capacity.mru),
            ut(n.used.sru, n.capacity.sru),
            ut(n.used.hru, n.capacity.hru),
            [
                n.draining.then_some("draining: takes no new work"),
                is_loopback(&n.url).then_some("(loopback: unreachable from other nodes)"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; "),
        ]);
    }
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', widths[c] - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reservation::Capacity;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("http://127.0.0.1:8080"));
        assert!(is_loopback("http://127.8.0.1"));
        assert!(is_loopback("http://[::1]:80/x"));
        assert!(is_loopback("http://localhost:7000"));
        assert!(is_loopback("127.0.0.1:9000"));
        assert!(!is_loopback("http://10.0.0.5:8080"));
        assert!(!is_loopback("http://node1.example.org"));
    }

    #[test]
    fn ages() {
        let now = Utc::now();
        assert_eq!(ago(Some(now - chrono::Duration::seconds(8)), now), "8s ago");
        assert_eq!(
            ago(Some(now - chrono::Duration::seconds(300)), now),
            "5m ago"
        );
        assert_eq!(ago(Some(now - chrono::Duration::hours(3)), now), "3h ago");
        assert_eq!(ago(None, now), "never");
    }

    #[test]
    fn table_is_aligned_and_flags_loopback() {
        let cap = Capacity {
            cru: 8.0,
            mru: 16.0,
            sru: 100.0,
            hru: 0.0,
        };
        let used = Capacity {
            cru: 2.0,
            mru: 4.5,
            sru: 1.0,
            hru: 0.0,
        };
        let now = Utc::now();
        let nodes = vec![
            NodeInfo {
                node_id: "A".into(),
                url: "http://127.0.0.1:1".into(),
                capacity: cap,
                used,
                last_heartbeat: Some(now - chrono::Duration::seconds(8)),
                draining: true,
            },
            NodeInfo {
                node_id: "BBBBBB".into(),
                url: "http://10.0.0.2:1".into(),
                capacity: cap,
                used: Capacity::default(),
                last_heartbeat: None,
                draining: false,
            },
        ];
        let t = table(&nodes, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        let url_col = lines[0].find("URL").unwrap();
        assert_eq!(lines[1].find("http").unwrap(), url_col);
        assert_eq!(lines[2].find("http").unwrap(), url_col);
        assert!(
            lines[1].contains("8s ago") && lines[1].contains("2/8") && lines[1].contains("4.5/16")
        );
        assert!(lines[1]
            .ends_with("draining: takes no new work; (loopback: unreachable from other nodes)"));
        assert!(lines[2].contains("never") && !lines[2].contains("loopback"));
        assert!(!lines[2].contains("draining"));
    }
}
