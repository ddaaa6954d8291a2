//! The running CAN connector: one task owns the bus. It receives every
//! frame, routes it by (id, extended, command) to the devices whose items
//! it carries, sends the configured polls, and puts the frames asked by
//! ThingsBoard (RPCs, attribute updates, already encoded by the downlink
//! converter) on the bus between frames.
//!
//! A frame no item reads is counted (`unmatched`) and dropped; error
//! frames are counted (`bus_errors`) and logged once per change of what
//! they say. Losing the bus (a socket error, the controller bus-off, the
//! socketcand server gone) closes it and, per `reconnect`, opens it again
//! every `reconnectPeriod`, `reconnectCount` times (forever by default);
//! `once` polls are sent again on each new connection, as the Python
//! gateway does. While the bus is down, requests are answered at once
//! with why, not left to time out.
//!
//! A downlink message may ask for the device's answer (`response`: the
//! first frame with an id, within a timeout, as a diagnostic request
//! expects its response); the job is answered with those frames once they
//! have all come, or with a timeout.

use crate::config::CanConfig;
use crate::link::{Event, Link, describe_error};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tbgw_core::connector::{Connector, ConnectorContext, RouteId, Uplink};
use tbgw_core::downlink::{DeviceJob, ToConnector};
use tbgw_core::setup::ComponentRef;
use tbgw_core::{CanFrame, CanResponse, DeviceRequest, DownlinkMessage, RawUplink, Source, now_ms};
use tokio::time::{Instant, sleep_until};

/// A CAN connector: the bus, the devices, and the route of each device's
/// uplink converter.
pub struct CanConnector {
    name: String,
    config: CanConfig,
    /// The route of each device.
    routes: Vec<RouteId>,
}

impl CanConnector {
    /// `routes[i]` is the route id of the config's route `i`.
    pub fn new(name: impl Into<String>, config: CanConfig, routes: &[RouteId]) -> CanConnector {
        // The gateway gives one id per declared route, and every device has
        // one of them (`parse`): a miss is a bug of tbgw, not of the config.
        let routes = config
            .device_routes
            .iter()
            .map(|r| *routes.get(*r).expect("the gateway gives every declared route an id"))
            .collect();
        CanConnector { name: name.into(), config, routes }
    }
}

impl Connector for CanConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, ctx: ConnectorContext) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(run(*self, ctx))
    }
}

/// How a connection to the bus ended.
enum End {
    /// The connector is stopping.
    Stopped,
    /// The bus was lost, and why.
    Lost(String),
}

fn refuse(ctx: &ConnectorContext, job: ToConnector, why: &str) {
    match job {
        ToConnector::Device(job) => {
            ctx.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
            let _ = job.reply.send(Err(why.to_owned()));
        }
        ToConnector::ConnectorRpc { method, reply, .. } => {
            let _ =
                reply.send(Err(format!("the can connector has no connector RPC `{method}`; send RPCs to its devices")));
        }
    }
}

async fn run(conn: CanConnector, mut ctx: ConnectorContext) {
    let c = &conn.config;
    // A custom downlink converter may wait for any frame as an answer:
    // then the kernel passes them all.
    let custom_downlink = c.downlinks.iter().any(|d| matches!(d.converter.component, ComponentRef::File(_)));
    let ids: Option<Vec<(u32, bool)>> = (!custom_downlink).then(|| c.routes.ids().collect());
    let mut ever_connected = false;
    let mut failures: u64 = 0;
    let why_down = 'outer: loop {
        let opened = tokio::select! {
            r = Link::open(&c.interface, ids.clone()) => r,
            _ = ctx.stop_intake.cancelled() => break "the connector is stopping".to_owned(),
        };
        match opened {
            Ok(link) => {
                if ever_connected {
                    ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                } else {
                    // The devices are known without their saying: connect
                    // them now, so that requests reach them before they
                    // have sent anything (as the Python gateway does).
                    for (device, device_type) in c.devices.iter().zip(&c.device_types) {
                        let request =
                            DeviceRequest::Connect { device: device.clone(), device_type: device_type.clone() };
                        ctx.downlink.requests.send(request);
                    }
                }
                ever_connected = true;
                failures = 0;
                ctx.stats.connected.store(true, Ordering::Relaxed);
                tracing::info!(connector = %conn.name, "connected to {}", c.interface);
                let end = Session::new(&conn, &mut ctx, link).run().await;
                ctx.stats.connected.store(false, Ordering::Relaxed);
                match end {
                    End::Stopped => break "the connector is stopping".to_owned(),
                    End::Lost(why) => tracing::warn!(connector = %conn.name, "lost {}: {why}", c.interface),
                }
            }
            Err(why) => tracing::warn!(connector = %conn.name, "cannot open {}: {why}", c.interface),
        }
        if !c.reconnect.enabled {
            tracing::error!(connector = %conn.name, "the bus is down and `reconnect` is false: the connector stops");
            break format!("{} is down (reconnect is off)", c.interface);
        }
        failures += 1;
        if let Some(max) = c.reconnect.count
            && failures > max
        {
            tracing::error!(connector = %conn.name, "the bus is still down after {max} attempts (reconnectCount): the connector stops");
            break format!("{} is down (gave up after {max} attempts)", c.interface);
        }
        tracing::info!(connector = %conn.name, "next attempt in {:?}", c.reconnect.period);
        let wake = Instant::now() + c.reconnect.period;
        let why = format!("{} is not connected; the next attempt is within {:?}", c.interface, c.reconnect.period);
        loop {
            tokio::select! {
                _ = sleep_until(wake) => break,
                _ = ctx.stop_intake.cancelled() => break 'outer "the connector is stopping".to_owned(),
                Some(job) = ctx.downlink.jobs.recv() => refuse(&ctx, job, &why),
            }
        }
    };
    // Stopping, or given up: answer what still comes until the end.
    loop {
        tokio::select! {
            _ = ctx.finish.cancelled() => break,
            Some(job) = ctx.downlink.jobs.recv() => refuse(&ctx, job, &why_down),
        }
    }
    ctx.stats.connected.store(false, Ordering::Relaxed);
    tracing::info!(connector = %conn.name, "stopped");
}

/// A job whose frames are on the bus, waiting for the device's answers.
struct Waiting {
    job: DeviceJob,
    answers: Vec<RawUplink>,
    expects: VecDeque<CanResponse>,
    deadline: Instant,
}

/// One connection to the bus.
struct Session<'a> {
    conn: &'a CanConnector,
    ctx: &'a mut ConnectorContext,
    link: Link,
    /// The `always` polls' next times (an index into the config's polls).
    due: Vec<(Instant, usize)>,
    waiting: VecDeque<Waiting>,
    /// What the last error frame said, so that a bus in trouble is logged
    /// once per change, not once per frame.
    last_error: Option<String>,
}

impl<'a> Session<'a> {
    fn new(conn: &'a CanConnector, ctx: &'a mut ConnectorContext, link: Link) -> Session<'a> {
        Session { conn, ctx, link, due: Vec::new(), waiting: VecDeque::new(), last_error: None }
    }

    async fn run(mut self) -> End {
        let now = Instant::now();
        for (i, p) in self.conn.config.polls.iter().enumerate() {
            if let Err(why) = self.poll(i).await {
                return End::Lost(why);
            }
            if let Some(period) = p.period {
                self.due.push((now + period, i));
            }
        }
        // Far enough to never fire, near enough not to overflow.
        let never = || Instant::now() + Duration::from_secs(86_400);
        loop {
            let next_poll = self.due.iter().map(|(t, _)| *t).min().unwrap_or_else(never);
            let deadline = self.waiting.front().map(|w| w.deadline);
            let result = tokio::select! {
                biased;
                _ = self.ctx.stop_intake.cancelled() => return End::Stopped,
                event = self.link.next() => match event {
                    Ok(event) => self.event(event).await,
                    Err(why) => return End::Lost(why),
                },
                Some(job) = self.ctx.downlink.jobs.recv() => self.job(job).await,
                _ = sleep_until(next_poll) => self.poll_due().await,
                _ = sleep_until(deadline.unwrap_or_else(never)), if deadline.is_some() => {
                    self.time_out();
                    Ok(())
                }
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    async fn poll(&mut self, i: usize) -> Result<(), String> {
        let p = &self.conn.config.polls[i];
        match self.link.send(&p.frame, &p.data).await {
            Ok(()) => {
                self.ctx.stats.sent_to_devices.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(crate::link::SendError::Refused(why)) => {
                // A configuration the bus cannot carry (an FD poll over
                // socketcand): say so, keep the bus.
                tracing::warn!(connector = %self.conn.name, key = %p.key, "poll not sent: {why}");
                Ok(())
            }
            Err(crate::link::SendError::Lost(why)) => Err(why),
        }
    }

    async fn poll_due(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let due: Vec<usize> = self.due.iter().filter(|(t, _)| *t <= now).map(|(_, i)| *i).collect();
        for i in due {
            self.poll(i).await.map_err(End::Lost)?;
        }
        for (t, i) in &mut self.due {
            if *t <= now {
                let period = self.conn.config.polls[*i].period.unwrap_or(Duration::from_secs(1));
                // Keep the period's phase; after a stall, start again from now.
                *t += period;
                if *t <= now {
                    *t = now + period;
                }
            }
        }
        Ok(())
    }

    async fn event(&mut self, event: Event) -> Result<(), End> {
        let (frame, data) = match event {
            Event::Frame(f, data) => (f, data),
            Event::Error { bits, data } => {
                self.ctx.stats.bus_errors.fetch_add(1, Ordering::Relaxed);
                let (what, bus_off) = describe_error(bits, &data);
                if self.last_error.as_deref() != Some(what.as_str()) {
                    tracing::warn!(connector = %self.conn.name, "bus error: {what}");
                    self.last_error = Some(what);
                }
                if bus_off {
                    return Err(End::Lost("the controller is bus-off".to_owned()));
                }
                return Ok(());
            }
        };
        if self.last_error.take().is_some() {
            tracing::info!(connector = %self.conn.name, "frames arrive again after the bus errors");
        }
        self.ctx.stats.received.fetch_add(1, Ordering::Relaxed);
        self.answer(&frame, &data);
        if frame.rtr {
            return Ok(());
        }
        let c = &self.conn.config;
        let mut devices: Vec<usize> = Vec::new();
        for i in c.routes.items(frame.id, frame.extended, &data) {
            let d = c.item_devices[i];
            if !devices.contains(&d) {
                devices.push(d);
            }
        }
        if devices.is_empty() {
            self.ctx.stats.unmatched.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let received_at = now_ms();
        for d in devices {
            let name = &c.devices[d];
            let raw = RawUplink {
                source: Source::Can(frame),
                device: Some(name.clone()),
                payload: data.clone(),
                metadata: vec![("interface".to_owned(), c.interface.channel().to_owned())],
                received_at,
            };
            // A device's frames keep their order: one converter thread each.
            if self.ctx.sink.send(name, Uplink { route: self.conn.routes[d], raw, ack: None }).await.is_err() {
                return Err(End::Stopped);
            }
        }
        Ok(())
    }

    /// A frame that a waiting job expects.
    fn answer(&mut self, frame: &CanFrame, data: &[u8]) {
        let Some(w) = self.waiting.front_mut() else { return };
        let Some(want) = w.expects.front() else { return };
        if want.id != frame.id || want.extended != frame.extended {
            return;
        }
        w.expects.pop_front();
        w.answers.push(RawUplink {
            source: Source::Can(*frame),
            device: Some(w.job.device.clone()),
            payload: data.to_vec(),
            metadata: Vec::new(),
            received_at: now_ms(),
        });
        match w.expects.front() {
            Some(next) => w.deadline = Instant::now() + Duration::from_millis(u64::from(next.timeout_ms)),
            None => {
                if let Some(w) = self.waiting.pop_front() {
                    let _ = w.job.reply.send(Ok(w.answers));
                }
            }
        }
    }

    fn time_out(&mut self) {
        if let Some(w) = self.waiting.pop_front() {
            self.ctx.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
            let what = w.expects.front().map_or_else(String::new, |r| {
                let kind = if r.extended { "extended" } else { "standard" };
                format!(" (a frame with {kind} id 0x{:X} within {} ms)", r.id, r.timeout_ms)
            });
            let _ = w.job.reply.send(Err(format!("`{}` did not answer{what}", w.job.device)));
        }
    }

    async fn job(&mut self, job: ToConnector) -> Result<(), End> {
        let job = match job {
            ToConnector::Device(job) => job,
            rpc => {
                refuse(self.ctx, rpc, "");
                return Ok(());
            }
        };
        if !self.conn.config.devices.contains(&job.device) {
            let why = format!("connector `{}` has no device named `{}`", self.conn.name, job.device);
            refuse(self.ctx, ToConnector::Device(job), &why);
            return Ok(());
        }
        let mut sends = Vec::new();
        for m in &job.messages {
            match m {
                DownlinkMessage::Can(s) => sends.push(s.clone()),
                other => {
                    let why = format!(
                        "the can connector sends CAN frames; the downlink converter made a `{}` message",
                        other.kind()
                    );
                    refuse(self.ctx, ToConnector::Device(job), &why);
                    return Ok(());
                }
            }
        }
        let mut expects = VecDeque::new();
        for s in &sends {
            match self.link.send(&s.frame, &s.payload).await {
                Ok(()) => {
                    self.ctx.stats.sent_to_devices.fetch_add(1, Ordering::Relaxed);
                    expects.extend(s.response);
                }
                Err(crate::link::SendError::Refused(why)) => {
                    refuse(self.ctx, ToConnector::Device(job), &why);
                    return Ok(());
                }
                Err(crate::link::SendError::Lost(why)) => {
                    refuse(self.ctx, ToConnector::Device(job), &format!("the frame was not sent: {why}"));
                    return Err(End::Lost(why));
                }
            }
        }
        match expects.front() {
            None => {
                let _ = job.reply.send(Ok(Vec::new()));
            }
            Some(first) => {
                let deadline = Instant::now() + Duration::from_millis(u64::from(first.timeout_ms));
                self.waiting.push_back(Waiting { job, answers: Vec::new(), expects, deadline });
            }
        }
        Ok(())
    }
}
