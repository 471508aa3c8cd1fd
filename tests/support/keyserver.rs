//! A key server (an identity provider's `jwks_uri`) the test controls: it serves a JWKS
//! document with any status, late, or misbehaves the ways a real network does (a reset after
//! the response headers, a stall in the middle of the body).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How the key server answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// `status` with `body`; a request whose path contains "slow" is answered after 800 ms.
    Serve { status: u16, body: String },
    /// Like `Serve`, but every answer comes after `delay_ms`.
    Late {
        delay_ms: u64,
        status: u16,
        body: String,
    },
    /// Sends the status line and headers (announcing a body), part of the body, then resets
    /// the connection (TCP RST).
    ResetAfterHeaders,
    /// Sends the status line, headers and part of the body, then stalls for `ms`.
    Stall { ms: u64 },
}

#[derive(Clone)]
pub struct KeyServer {
    pub port: u16,
    behaviour: Arc<Mutex<Behaviour>>,
    /// When each request arrived.
    hits: Arc<Mutex<Vec<Instant>>>,
}

impl KeyServer {
    /// Serves `jwks` with 200.
    pub fn start(jwks: &Value) -> KeyServer {
        KeyServer::start_with(Behaviour::Serve {
            status: 200,
            body: jwks.to_string(),
        })
    }

    pub fn start_with(behaviour: Behaviour) -> KeyServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind key server");
        let port = listener.local_addr().expect("address").port();
        let server = KeyServer {
            port,
            behaviour: Arc::new(Mutex::new(behaviour)),
            hits: Arc::new(Mutex::new(Vec::new())),
        };
        let serving = server.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let serving = serving.clone();
                std::thread::spawn(move || serving.answer(stream));
            }
        });
        server
    }

    /// Serves `jwks` with `status` from now on.
    pub fn serve(&self, status: u16, jwks: &Value) {
        self.behave(Behaviour::Serve {
            status,
            body: jwks.to_string(),
        });
    }

    pub fn behave(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("behaviour") = behaviour;
    }

    /// Requests answered (or misanswered) so far.
    pub fn hits(&self) -> usize {
        self.hits.lock().expect("hits").len()
    }

    /// When each request so far arrived.
    pub fn hit_times(&self) -> Vec<Instant> {
        self.hits.lock().expect("hits").clone()
    }

    fn answer(&self, stream: TcpStream) {
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        let mut slow = false;
        // Read the request head; a GET has no body.
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            slow |= line.starts_with("GET") && line.contains("slow");
            line.clear();
        }
        let behaviour = self.behaviour.lock().expect("behaviour").clone();
        self.hits.lock().expect("hits").push(Instant::now());
        let respond = |status: u16, body: &str| {
            let _ = write!(
                &stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        };
        let partial = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n\r\n{\"keys\": [";
        match behaviour {
            Behaviour::Serve { status, body } => {
                if slow {
                    std::thread::sleep(Duration::from_millis(800));
                }
                respond(status, &body);
            }
            Behaviour::Late {
                delay_ms,
                status,
                body,
            } => {
                std::thread::sleep(Duration::from_millis(delay_ms));
                respond(status, &body);
            }
            Behaviour::ResetAfterHeaders => {
                let _ = (&stream).write_all(partial.as_bytes());
                let _ = (&stream).flush();
                std::thread::sleep(Duration::from_millis(50));
                reset(&stream);
            }
            Behaviour::Stall { ms } => {
                let _ = (&stream).write_all(partial.as_bytes());
                let _ = (&stream).flush();
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
    }
}

/// Makes the close of `stream` a TCP RST, not a FIN: `SO_LINGER` on, with a zero timeout.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a pointer to a `linger` of the size given.
    #[allow(unsafe_code)]
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
