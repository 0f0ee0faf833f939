//! RESP (Redis protocol) requests and replies, as much as a 0-db client
//! sends: arrays of bulk strings, and inline commands for `nc`/`telnet`.
//!
//! Sizes are bounded (8 MiB per argument, as 0-db's own payload limit, and
//! 1024 arguments) so a broken client cannot make the stand-in allocate
//! without end.

use std::io::{self, BufRead, Read, Write};

/// Largest bulk argument accepted.
pub const MAX_BULK: usize = 8 * 1024 * 1024;
/// Most arguments in one request.
pub const MAX_ARGS: usize = 1024;
const MAX_LINE: usize = 64 * 1024;

/// A reply to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+text`
    Status(String),
    /// `-text`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$len bytes` or the nil bulk `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n ...`
    Array(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status("OK".into())
    }
    pub fn err(msg: &str) -> Reply {
        Reply::Error(msg.into())
    }
    pub fn bulk(b: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(Some(b.into()))
    }

    /// Encode onto `out`.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        match self {
            Reply::Status(s) => write!(out, "+{}\r\n", one_line(s)),
            Reply::Error(s) => write!(out, "-{}\r\n", one_line(s)),
            Reply::Int(n) => write!(out, ":{n}\r\n"),
            Reply::Bulk(None) => out.write_all(b"$-1\r\n"),
            Reply::Bulk(Some(b)) => {
                write!(out, "${}\r\n", b.len())?;
                out.write_all(b)?;
                out.write_all(b"\r\n")
            }
            Reply::Array(items) => {
                write!(out, "*{}\r\n", items.len())?;
                items.iter().try_for_each(|i| i.write_to(out))
            }
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn read_line<R: BufRead>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = Read::take(&mut *r, MAX_LINE as u64 + 2).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        return Err(bad("line too long or cut"));
    }
    line.pop();
    if line.ends_with(b"\r") {
        line.pop();
    }
    Ok(Some(line))
}

fn parse_len(line: &[u8], what: &str) -> io::Result<i64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| bad(&format!("bad {what} length")))
}

/// Read one request: `Ok(None)` at a clean end of stream. An empty inline
/// line yields an empty request, which the caller skips.
pub fn read_request<R: BufRead>(r: &mut R) -> io::Result<Option<Vec<Vec<u8>>>> {
    let Some(line) = read_line(r)? else {
        return Ok(None);
    };
    if line.first() != Some(&b'*') {
        // Inline command: words separated by blanks.
        let words = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(|w| w.to_vec())
            .collect();
        return Ok(Some(words));
    }
    let n = parse_len(&line[1..], "array")?;
    if n < 0 {
        return Ok(Some(Vec::new()));
    }
    let n = n as usize;
    if n > MAX_ARGS {
        return Err(bad("too many arguments"));
    }
    let mut argv = Vec::with_capacity(n);
    for _ in 0..n {
        let head = read_line(r)?.ok_or_else(|| bad("stream ended inside a request"))?;
        if head.first() != Some(&b'$') {
            return Err(bad("expected a bulk string"));
        }
        let len = parse_len(&head[1..], "bulk")?;
        if len < 0 || len as usize > MAX_BULK {
            return Err(bad("bulk length out of range"));
        }
        let mut buf = vec![0u8; len as usize + 2];
        r.read_exact(&mut buf)?;
        if !buf.ends_with(b"\r\n") {
            return Err(bad("bulk string not terminated by CRLF"));
        }
        buf.truncate(len as usize);
        argv.push(buf);
    }
    Ok(Some(argv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_arrays_and_inline() {
        let mut input: &[u8] = b"*2\r\n$3\r\nGET\r\n$0\r\n\r\nPING  hi\r\n";
        assert_eq!(
            read_request(&mut input).unwrap().unwrap(),
            vec![b"GET".to_vec(), b"".to_vec()]
        );
        assert_eq!(
            read_request(&mut input).unwrap().unwrap(),
            vec![b"PING".to_vec(), b"hi".to_vec()]
        );
        assert!(read_request(&mut input).unwrap().is_none());
    }

    #[test]
    fn refuses_oversized_and_cut_requests() {
        let mut input: &[u8] = b"*1\r\n$99999999999\r\n";
        assert!(read_request(&mut input).is_err());
        let mut input: &[u8] = b"*2\r\n$3\r\nGET\r\n";
        assert!(read_request(&mut input).is_err());
    }

    #[test]
    fn writes_replies() {
        let mut out = Vec::new();
        Reply::Array(vec![
            Reply::bulk("a"),
            Reply::Bulk(None),
            Reply::Int(3),
            Reply::err("x\ny"),
        ])
        .write_to(&mut out)
        .unwrap();
        assert_eq!(out, b"*4\r\n$1\r\na\r\n$-1\r\n:3\r\n-x y\r\n");
    }
}
