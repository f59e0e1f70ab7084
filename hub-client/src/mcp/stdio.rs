//! `hub mcp`'s own line framing on stdio, in front of rmcp: every request gets an answer, one
//! over the bound too. rmcp's stdio codec drops a line over [`MAX_LINE`] and answers nothing, so
//! a client that sent one waits until its own timeout; here such a line is read through to its
//! end and answered with a JSON-RPC error (`-32600`) that names the bound, with the request's id
//! when its first [`ID_WINDOW`] bytes give it (clients write `id` before `params`).
//!
//! stdin -> reader task -> (lines within the bound) -> rmcp; rmcp -> writer task -> stdout; the
//! reader's error answers go to the writer too, so whole lines never interleave.

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::mpsc;

/// The longest line read from the client (rmcp's own bound).
pub const MAX_LINE: usize = rmcp::transport::async_rw::DEFAULT_MAX_LINE_LENGTH;

/// How much of an oversize line is kept to find its request id.
pub const ID_WINDOW: usize = 64 * 1024;

/// The two ends rmcp serves on (read, write), with the tasks that frame the process's stdin and
/// stdout around them.
pub fn framed_stdio() -> (DuplexStream, DuplexStream) {
    let (stdin, stdout) = rmcp::transport::stdio_pipes();
    framed(stdin, stdout)
}

/// [`framed_stdio`] over any reader and writer.
pub fn framed<R, W>(input: R, output: W) -> (DuplexStream, DuplexStream)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (to_rmcp, rmcp_reads) = tokio::io::duplex(64 * 1024);
    let (rmcp_writes, from_rmcp) = tokio::io::duplex(64 * 1024);
    let (errors, error_rx) = mpsc::channel(16);
    tokio::spawn(read_lines(input, to_rmcp, errors));
    tokio::spawn(write_lines(from_rmcp, error_rx, output));
    (rmcp_reads, rmcp_writes)
}

/// Passes the client's lines within the bound to rmcp; answers the others.
async fn read_lines<R: AsyncRead + Unpin>(
    input: R,
    mut to_rmcp: DuplexStream,
    errors: mpsc::Sender<Vec<u8>>,
) {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut len = 0usize;
        let mut ended = false;
        // One line: kept whole within the bound, its first ID_WINDOW bytes past it.
        loop {
            let buf = match input.fill_buf().await {
                Ok(buf) => buf,
                Err(e) => {
                    tracing::debug!("stdin: {e}");
                    return;
                }
            };
            if buf.is_empty() {
                ended = true;
                break;
            }
            let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..=i], true),
                None => (buf, false),
            };
            let n = chunk.len();
            let keep = if len + n <= MAX_LINE + 1 {
                n
            } else {
                ID_WINDOW.saturating_sub(line.len()).min(n)
            };
            if len + n > MAX_LINE + 1 && line.len() > ID_WINDOW {
                line.truncate(ID_WINDOW);
            }
            line.extend_from_slice(&chunk[..keep]);
            len += n;
            input.consume(n);
            if done {
                break;
            }
        }
        if len > MAX_LINE + 1 {
            let answer = oversize_answer(&line, len);
            if errors.send(answer).await.is_err() {
                return;
            }
        } else if !line.is_empty() && to_rmcp.write_all(&line).await.is_err() {
            return;
        }
        if ended {
            let _ = to_rmcp.shutdown().await;
            return;
        }
    }
}

/// Writes rmcp's lines and the reader's answers to the client, whole lines at a time.
async fn write_lines<W: AsyncWrite + Unpin>(
    from_rmcp: DuplexStream,
    mut errors: mpsc::Receiver<Vec<u8>>,
    mut output: W,
) {
    let mut from_rmcp = BufReader::new(from_rmcp);
    let mut line = Vec::new();
    let mut rmcp_open = true;
    loop {
        line.clear();
        tokio::select! {
            read = from_rmcp.read_until(b'\n', &mut line), if rmcp_open => match read {
                Ok(0) | Err(_) => rmcp_open = false,
                Ok(_) => {}
            },
            answer = errors.recv() => match answer {
                Some(answer) => line = answer,
                None if !rmcp_open => return,
                None => continue,
            },
            else => return,
        }
        if line.is_empty() {
            if !rmcp_open {
                return;
            }
            continue;
        }
        if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
            return;
        }
    }
}

/// The JSON-RPC error answering a request line of `len` bytes over the bound, of which `start`
/// is the beginning.
pub fn oversize_answer(start: &[u8], len: usize) -> Vec<u8> {
    let message = format!(
        "the request is {len} bytes, over the {} MiB bound of a message to hub mcp",
        MAX_LINE >> 20
    );
    let answer = json!({
        "jsonrpc": "2.0",
        "id": request_id(start).unwrap_or(Value::Null),
        "error": { "code": -32600, "message": message, "data": { "max_bytes": MAX_LINE } },
    });
    let mut out = answer.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// The `id` of the JSON-RPC request that `start` begins: a number or a string value of the
/// top-level key `id`, if it comes before the text runs out.
pub fn request_id(start: &[u8]) -> Option<Value> {
    let text = String::from_utf8_lossy(start);
    let mut chars = text.char_indices().peekable();
    let mut depth = 0usize;
    let mut expect_key = false;
    while let Some((i, c)) = chars.next() {
        match c {
            '{' | '[' => {
                depth += 1;
                expect_key = c == '{' && depth == 1;
            }
            '}' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expect_key = true,
            '"' => {
                let end = string_end(&text, i)?;
                let key_here = expect_key && depth == 1 && &text[i..=end] == "\"id\"";
                expect_key = false;
                while chars.peek().is_some_and(|(j, _)| *j <= end) {
                    chars.next();
                }
                if key_here {
                    let rest = text[end + 1..].trim_start().strip_prefix(':')?.trim_start();
                    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
                    return match stream.next()? {
                        Ok(v @ (Value::Number(_) | Value::String(_))) => Some(v),
                        _ => None,
                    };
                }
            }
            _ => {}
        }
    }
    None
}

/// Where the string starting with the quote at `start` ends (its closing quote).
fn string_end(text: &str, start: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_found_before_the_params_and_only_at_the_top() {
        let id = |s: &str| request_id(s.as_bytes());
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"a":"#),
            Some(json!(7))
        );
        assert_eq!(id(r#"{"id": "x-1" , "method""#), Some(json!("x-1")));
        assert_eq!(
            id(r#"{"method":"m","params":{"id":5,"text":"aaaa"#),
            None,
            "an id inside params is not the request's"
        );
        assert_eq!(id(r#"{"method":"say \"id\"","id":3}"#), Some(json!(3)));
        assert_eq!(id(r#"{"jsonrpc":"2.0","method":"#), None);
        assert_eq!(id("garbage"), None);
    }

    /// A line over the bound is answered with the request's id and the bound; the lines around
    /// it reach rmcp whole.
    #[tokio::test]
    async fn an_oversize_line_is_answered_and_the_next_goes_through() {
        let (client, server_in) = tokio::io::duplex(1 << 20);
        let (server_out, answers) = tokio::io::duplex(1 << 20);
        let (mut rmcp_reads, _rmcp_writes) = framed(server_in, server_out);
        let mut client = client;
        let big = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":42,\"method\":\"tools/call\",\"params\":{{\"x\":\"{}\"}}}}\n",
            "a".repeat(MAX_LINE + 10)
        );
        let writer = tokio::spawn(async move {
            client.write_all(b"{\"id\":1}\n").await.unwrap();
            client.write_all(big.as_bytes()).await.unwrap();
            client.write_all(b"{\"id\":2}\n").await.unwrap();
            client
        });
        let mut got = BufReader::new(&mut rmcp_reads);
        let mut line = String::new();
        got.read_line(&mut line).await.unwrap();
        assert_eq!(line, "{\"id\":1}\n");
        line.clear();
        got.read_line(&mut line).await.unwrap();
        assert_eq!(line, "{\"id\":2}\n");
        let _client = writer.await.unwrap();
        let mut answers = BufReader::new(answers);
        let mut answer = String::new();
        answers.read_line(&mut answer).await.unwrap();
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["id"], 42);
        assert_eq!(answer["error"]["code"], -32600);
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("16 MiB"));
    }
}
