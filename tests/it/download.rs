//! Downloading weights, without the internet: a small HTTP server on
//! 127.0.0.1 serves the Hugging Face hub's file layout
//! (`/<repo>/resolve/main/<file>`, with the headers hf-hub reads) and
//! `HF_ENDPOINT` points the binary at it. Checked: a download into the cache;
//! the cache hit that follows (no request); a corrupted download, rejected by
//! the registry's SHA-256 and removed; an unreachable endpoint, a clear error.

use crate::util::{isolated, output_within, root, s, temp_dir};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const REPO: &str = "anytime-rs/msdnet-fmnist";
const FILE: &str = "msdnet-fmnist.safetensors";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A hub serving one file; stops when dropped, or after two minutes.
struct Hub {
    endpoint: String,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `body` as `/<REPO>/resolve/main/<FILE>`; anything else is 404.
fn serve(body: Vec<u8>) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.set_nonblocking(true).expect("nonblocking");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let (requests, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let (r, st) = (requests.clone(), stop.clone());
    let etag = anytime_io::sha256_file(write_temp(&body)).expect("etag");
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !st.load(Ordering::SeqCst) && Instant::now() < deadline {
            match listener.accept() {
                Ok((conn, _)) => {
                    r.fetch_add(1, Ordering::SeqCst);
                    let _ = answer(conn, &body, &etag);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    Hub { endpoint, requests, stop, thread: Some(thread) }
}

/// Writes `bytes` to a fresh temporary file (to hash them with the project's own function).
fn write_temp(bytes: &[u8]) -> PathBuf {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let p = temp_dir(&format!("hub-body-{}", COUNT.fetch_add(1, Ordering::SeqCst))).join("f");
    std::fs::write(&p, bytes).expect("write");
    p
}

/// Answers one request on `conn` (then closes it), as the hub does: ranges
/// (206 with Content-Range), ETag, X-Repo-Commit.
fn answer(conn: TcpStream, body: &[u8], etag: &str) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let mut conn = conn;
    if path != format!("/{REPO}/resolve/main/{FILE}") {
        let msg = b"Entry not found";
        write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", msg.len())?;
        return conn.write_all(msg);
    }
    let n = body.len();
    if range.as_deref().and_then(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse::<usize>().ok()).unwrap_or(0)
        >= n
    {
        write!(conn, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return conn.flush();
    }
    let (status, start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().unwrap_or(n - 1).min(n - 1);
            ("206 Partial Content", a, b)
        }
        None => ("200 OK", 0, n - 1),
    };
    let part = &body[start..=end];
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{n}\r\nETag: \"{etag}\"\r\n\
         X-Linked-Etag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        part.len()
    )?;
    conn.write_all(part)?;
    conn.flush()
}

/// `anytime eval` on 20 sample images from an empty directory, with the hub
/// at `endpoint` and its cache in `hf_home`.
fn eval(endpoint: &str, hf_home: &Path, extra: &[&str]) -> Output {
    let cwd = hf_home.join("cwd");
    std::fs::create_dir_all(&cwd).expect("cwd");
    let data = root().join("data/fashion-mnist-sample");
    let mut cmd = isolated(Command::new(env!("CARGO_BIN_EXE_anytime")), hf_home);
    cmd.current_dir(&cwd).env("HF_ENDPOINT", endpoint).args([
        "eval",
        "--model",
        "msdnet-fmnist",
        "--limit",
        "20",
        "--data-dir",
        s(&data),
        "--json",
    ]);
    cmd.args(extra);
    let out = output_within(cmd, Duration::from_secs(120));
    eprintln!("$ HF_ENDPOINT={endpoint} anytime eval ... {extra:?}\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The snapshot file hf-hub leaves in the cache.
fn cached_file(hf_home: &Path) -> PathBuf {
    hf_home.join("hub/models--anytime-rs--msdnet-fmnist/snapshots").join(COMMIT).join(FILE)
}

fn one_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line: {err}");
    assert!(lines[0].starts_with("error: ") && !err.contains("panicked"), "{err}");
    lines[0].to_string()
}

fn shipped() -> (Vec<u8>, &'static str) {
    let p = anytime_models::registry::lookup("msdnet-fmnist").expect("entry").weights.expect("published");
    (std::fs::read(root().join("weights").join(p.file)).expect("weights"), p.sha256)
}

#[test]
fn download_then_cache_hit() {
    let (bytes, sha) = shipped();
    let hub = serve(bytes);
    let hf_home = temp_dir("download-ok");
    let out = eval(&hub.endpoint, &hf_home, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["images"], 20);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("downloaded {FILE} from {}/{REPO}/resolve/main/{FILE}", hub.endpoint)), "{err}");
    let file = cached_file(&hf_home);
    assert_eq!(anytime_io::sha256_file(&file).expect("cached"), sha);
    let served = hub.requests.load(Ordering::SeqCst);
    assert!(served >= 2, "metadata and body requests, got {served}");

    // The cache answers now: no request, no download message; also offline.
    for extra in [&[][..], &["--offline"][..]] {
        let again = eval(&hub.endpoint, &hf_home, extra);
        assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
        assert!(!String::from_utf8_lossy(&again.stderr).contains("downloaded"));
        assert_eq!(hub.requests.load(Ordering::SeqCst), served, "a cache hit makes no request");
    }
}

#[test]
fn corrupted_download_is_rejected() {
    let (mut bytes, sha) = shipped();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x55;
    let hub = serve(bytes);
    let hf_home = temp_dir("download-bad");
    let err = one_error(&eval(&hub.endpoint, &hf_home, &[]));
    assert!(
        err.contains(&format!("5. download from {}/{REPO}/resolve/main/{FILE}: rejected", hub.endpoint))
            && err.contains(&format!("the registry records {sha} (removed from the cache)")),
        "{err}"
    );
    assert!(!cached_file(&hf_home).exists(), "the corrupted file must not stay in the cache");
    let blobs = hf_home.join("hub/models--anytime-rs--msdnet-fmnist/blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .map(|d| d.flatten().map(|e| e.file_name()).filter(|n| !n.to_string_lossy().ends_with(".lock")).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "blobs left: {left:?}");
    // Nor is it found afterwards.
    let offline = one_error(&eval(&hub.endpoint, &hf_home, &["--offline"]));
    assert!(offline.contains("not tried (--offline)"), "{offline}");
}

#[test]
fn unreachable_endpoint_is_a_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let hf_home = temp_dir("download-unreachable");
    let err = one_error(&eval(&endpoint, &hf_home, &[]));
    for part in [
        "no weights for msdnet-fmnist (msdnet-fmnist.safetensors); looked in order: 1. --weights: not given; 2. $ANYTIME_WEIGHTS_DIR: not set; 3. ",
        &format!("5. download from {endpoint}/{REPO}/resolve/main/{FILE}: failed ("),
        "to get it: connect to the network (or set HF_ENDPOINT to a reachable hub)",
    ] {
        assert!(err.contains(part), "'{part}' missing from {err}");
    }
}
