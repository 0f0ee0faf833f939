//! `k3s-standin`: stands in for `/bin/k3s` of the `rancher/k3s` image in
//! tests. It records how it was started (argv and environment) as one JSON
//! line `{"argv":[...],"env":{...}}`, printed to stdout (read it with
//! `docker logs`) and written to `/standin/started.json` (read it with
//! `docker exec ... cat`), then sleeps until SIGTERM.
//!
//! `K3S_STANDIN_OUT` overrides the file path (for running it outside a
//! container).

use std::io::Write;

fn main() {
    standins::signals::exit_on_term();
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    env.sort();
    let line = format!(
        "{{\"argv\":{},\"env\":{}}}\n",
        standins::json::string_array(argv.iter().map(String::as_str)),
        standins::json::string_object(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    );
    let path = std::env::var("K3S_STANDIN_OUT").unwrap_or_else(|_| "/standin/started.json".into());
    let path = std::path::Path::new(&path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(path, &line) {
        eprintln!("k3s-standin: cannot write {}: {e}", path.display());
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    drop(out);
    loop {
        std::thread::park();
    }
}
