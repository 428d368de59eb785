//! A TCP stream whose writes make the `sendto` / `sendmsg` system calls directly.
//!
//! tokio's `TcpStream` writes through the standard library, which calls glibc's
//! `send`. In a process with more than one thread (the gateway always has its
//! background threads) that wrapper brackets the system call with
//! `__pthread_enable_asynccancel` / `__pthread_disable_asynccancel`, an atomic
//! compare-and-swap each: two locked instructions per write that nothing here needs (no
//! thread of the gateway is ever cancelled). rustix makes the system call itself.
//!
//! Readiness is tokio's, used as its own `poll_write` does: wait until the socket is
//! writable, try, and on `EAGAIN` forget the readiness and wait again. A short write
//! forgets it too (tokio does the same: with epoll, a short write means the socket
//! buffer is full), so that the next write waits instead of making a system call that
//! would only return `EAGAIN`.
//!
//! Reads stay tokio's: reading into a buffer's uninitialised spare capacity without
//! `unsafe` is not possible, and the crate has none.

use std::io::{self, IoSlice};
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustix::net::{SendAncillaryBuffer, SendFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A [`TcpStream`] that writes with [`poll_send`].
#[derive(Debug)]
pub struct Tcp(pub TcpStream);

impl Deref for Tcp {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.0
    }
}

/// Send what of `buf` the socket takes now, or wait until it can take some: `sendto`
/// with `MSG_NOSIGNAL` (a peer that has gone is an `EPIPE` error, not a signal), as
/// the standard library's `send` does.
pub fn poll_send(io: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    poll_sent(io, cx, buf.len(), || {
        rustix::net::send(io, buf, SendFlags::NOSIGNAL)
    })
}

/// [`poll_send`] for several buffers in one `sendmsg` (as `writev`): hyper's and
/// rustls's writes, and `server::h1`'s head and body together.
pub fn poll_send_vectored(
    io: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    // At most IOV_MAX (1024 on Linux) buffers, as the standard library's `writev`.
    let bufs = &bufs[..bufs.len().min(1024)];
    let len = bufs.iter().map(|b| b.len()).sum();
    poll_sent(io, cx, len, || {
        rustix::net::sendmsg(
            io,
            bufs,
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL,
        )
    })
}

/// Readiness around one send of `len` bytes made by `send`.
fn poll_sent(
    io: &TcpStream,
    cx: &mut Context<'_>,
    len: usize,
    mut send: impl FnMut() -> rustix::io::Result<usize>,
) -> Poll<io::Result<usize>> {
    if len == 0 {
        return Poll::Ready(Ok(0));
    }
    loop {
        ready!(io.poll_write_ready(cx))?;
        let mut short = None;
        let sent = io.try_io(Interest::WRITABLE, || {
            let n = send()?;
            if n < len {
                // Reported as `WouldBlock`, which makes tokio forget the readiness;
                // the count is taken from `short`.
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match sent {
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Some(n) = short {
                    return Poll::Ready(Ok(n));
                }
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_send(&self.0, cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_send_vectored(&self.0, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (Tcp, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (Tcp(a.unwrap()), b.unwrap().0)
    }

    /// Read `rx` to its end and compare. Bounded: a writer that repeats bytes would
    /// keep the reader going for long.
    async fn receives_exactly(rx: &mut TcpStream, expected: &[u8]) {
        let mut got = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(60), rx.read_to_end(&mut got))
            .await
            .expect("the transfer ended in time")
            .unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes differ");
    }

    #[tokio::test]
    async fn writes_reach_the_peer_in_order_past_a_full_socket_buffer() {
        let (mut tx, mut rx) = pair().await;
        // Far more than the socket buffers hold: the writer must wait for the reader
        // (short writes and EAGAIN), and nothing may be lost or repeated.
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            tx.write_all(&data).await.unwrap();
            tx.shutdown().await.unwrap();
            tx
        });
        receives_exactly(&mut rx, &expected).await;
        let _tx = writer.await.unwrap();
    }

    #[tokio::test]
    async fn vectored_writes_reach_the_peer_in_order_past_a_full_socket_buffer() {
        let (mut tx, mut rx) = pair().await;
        // 3,000 pieces of 1 to 5,000 bytes (more than IOV_MAX of them), about 7.5 MB.
        let pieces: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| vec![(i % 251) as u8; 1 + (i as usize * 7919) % 5000])
            .collect();
        let expected: Vec<u8> = pieces.concat();
        let writer = tokio::spawn(async move {
            let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                let n = tx.write_vectored(rest).await.unwrap();
                assert!(n > 0, "a vectored write took nothing");
                IoSlice::advance_slices(&mut rest, n);
            }
            tx.shutdown().await.unwrap();
        });
        receives_exactly(&mut rx, &expected).await;
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_write_to_a_closed_peer_is_an_error_not_a_signal() {
        let (mut tx, rx) = pair().await;
        drop(rx);
        let mut failed = None;
        // The first writes may still be accepted; the peer's reset ends them.
        for _ in 0..1000 {
            if let Err(e) = tx.write_all(&[0u8; 65536]).await {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("writes to a closed peer kept succeeding");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn reads_are_the_streams_own() {
        let (mut a, mut b) = pair().await;
        b.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(a.write(b"").await.unwrap(), 0);
    }
}
