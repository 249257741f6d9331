//! `tracer top`: the node-local view in a terminal, a client of a running agent's API (so it
//! works over SSH or `kubectl exec` with no second agent and no privileges). Three panes: the
//! routes by p99 (live), the slowest recent requests (all, or the selected route's), and a
//! text waterfall of the selected request's trace with its critical path.
use std::{
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
};
use serde_json::Value;

use super::DEFAULT_LISTEN;

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The agent's view address (its --ui-listen).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN, env = "TRACER_TOP_CONNECT")]
    pub connect: String,

    /// Seconds between refreshes.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub interval: f64,
}

const KEYS: &str = " ↑↓/jk move · Tab switch pane · Enter: route → its slowest requests · Esc: all routes · w: 1m/5m · p: pause · q: quit ";

pub fn run(args: &TopArgs) -> ExitCode {
    let base = format!(
        "http://{}",
        args.connect
            .trim_start_matches("http://")
            .trim_end_matches('/')
    );
    let client = match Client::new(&base) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tracer top: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Fail before taking the terminal over: the usual mistake is no agent (or another address).
    if let Err(e) = client.get("/api/stats") {
        eprintln!(
            "tracer top: cannot reach the tracer agent's view at {base}/: {e:#}\n\
             Is the agent running, with --ui-listen {}? (Choose with --connect ADDR.)",
            args.connect
        );
        return ExitCode::FAILURE;
    }
    let mut app = App::new(
        client,
        Duration::from_secs_f64(args.interval.clamp(0.2, 60.0)),
    );
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            ratatui::restore();
            eprintln!("tracer top: needs a terminal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = app.run(&mut terminal);
    ratatui::restore();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer top: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A blocking client of the agent's JSON API.
struct Client {
    base: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    fn new(base: &str) -> Result<Self> {
        Ok(Self {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .context("HTTP client")?,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("runtime")?,
        })
    }

    fn get(&self, path_and_query: &str) -> Result<Value> {
        let url = format!("{}{path_and_query}", self.base);
        self.runtime.block_on(async {
            let resp = self.http.get(&url).send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            let value: Value =
                serde_json::from_slice(&body).map_err(|e| anyhow!("{url}: not JSON ({e})"))?;
            if !status.is_success() {
                return Err(anyhow!(
                    "{url}: {status}: {}",
                    value["error"].as_str().unwrap_or("")
                ));
            }
            Ok(value)
        })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Pane {
    Routes,
    Requests,
}

struct App {
    client: Client,
    interval: Duration,
    stats: Value,
    routes: Vec<Value>,
    requests: Vec<Value>,
    trace: Option<Value>,
    trace_id: Option<String>,
    routes_state: TableState,
    requests_state: TableState,
    pane: Pane,
    /// The route whose requests are listed: (service, kind, route).
    route_filter: Option<(String, String, String)>,
    five_minutes: bool,
    paused: bool,
    error: Option<String>,
}

impl App {
    fn new(client: Client, interval: Duration) -> Self {
        Self {
            client,
            interval,
            stats: Value::Null,
            routes: Vec::new(),
            requests: Vec::new(),
            trace: None,
            trace_id: None,
            routes_state: TableState::default().with_selected(Some(0)),
            requests_state: TableState::default().with_selected(Some(0)),
            pane: Pane::Requests,
            route_filter: None,
            five_minutes: false,
            paused: false,
            error: None,
        }
    }

    fn run(&mut self, terminal: &mut ratatui::DefaultTerminal) -> Result<()> {
        let mut next_refresh = Instant::now();
        loop {
            if !self.paused && Instant::now() >= next_refresh {
                self.refresh();
                next_refresh = Instant::now() + self.interval;
            }
            terminal.draw(|f| self.draw(f))?;
            let wait = next_refresh
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            if !event::poll(wait)? {
                continue;
            }
            let Event::Key(key) = event::read()? else {
                continue;
            };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            match key.code {
                KeyCode::Char('q') | KeyCode::Char('Q') => return Ok(()),
                KeyCode::Tab | KeyCode::BackTab => {
                    self.pane = match self.pane {
                        Pane::Routes => Pane::Requests,
                        Pane::Requests => Pane::Routes,
                    }
                }
                KeyCode::Down | KeyCode::Char('j') => self.step(1),
                KeyCode::Up | KeyCode::Char('k') => self.step(-1),
                KeyCode::Enter => {
                    if self.pane == Pane::Routes {
                        self.select_route();
                    }
                    next_refresh = Instant::now();
                }
                KeyCode::Esc => {
                    self.route_filter = None;
                    next_refresh = Instant::now();
                }
                KeyCode::Char('w') => {
                    self.five_minutes = !self.five_minutes;
                    next_refresh = Instant::now();
                }
                KeyCode::Char('p') | KeyCode::Char(' ') => self.paused = !self.paused,
                _ => {}
            }
        }
    }

    fn step(&mut self, by: i32) {
        let (state, len) = match self.pane {
            Pane::Routes => (&mut self.routes_state, self.routes.len()),
            Pane::Requests => (&mut self.requests_state, self.requests.len()),
        };
        if len == 0 {
            return;
        }
        let at = state.selected().unwrap_or(0) as i32 + by;
        state.select(Some(at.clamp(0, len as i32 - 1) as usize));
        if self.pane == Pane::Requests {
            self.load_selected_trace();
        }
    }

    fn select_route(&mut self) {
        let Some(r) = self
            .routes_state
            .selected()
            .and_then(|i| self.routes.get(i))
        else {
            return;
        };
        let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
        self.route_filter = Some((s("service"), s("kind"), s("route")));
        self.pane = Pane::Requests;
        self.requests_state.select(Some(0));
    }

    fn refresh(&mut self) {
        match self.fetch() {
            Ok(()) => self.error = None,
            Err(e) => self.error = Some(format!("{e:#}")),
        }
    }

    fn fetch(&mut self) -> Result<()> {
        self.stats = self.client.get("/api/stats")?;
        let window = if self.five_minutes { "5m" } else { "1m" };
        let mut routes = self
            .client
            .get(&format!("/api/routes?window={window}"))?
            .as_array()
            .cloned()
            .unwrap_or_default();
        routes.sort_by(|a, b| f(b, "p99_ms").total_cmp(&f(a, "p99_ms")));
        self.routes = routes;
        clamp_selection(&mut self.routes_state, self.routes.len());

        let since = unix_ms().saturating_sub(if self.five_minutes { 300_000 } else { 60_000 });
        let mut query = format!("/api/traces?order=slowest&limit=100&since={since}");
        if let Some((service, kind, route)) = &self.route_filter {
            query += &format!(
                "&service={}&kind={}&route={}",
                encode(service),
                encode(kind),
                encode(route)
            );
        }
        self.requests = self
            .client
            .get(&query)?
            .as_array()
            .cloned()
            .unwrap_or_default();
        clamp_selection(&mut self.requests_state, self.requests.len());
        self.trace_id = None;
        self.load_selected_trace();
        Ok(())
    }

    fn load_selected_trace(&mut self) {
        let Some(id) = self
            .requests_state
            .selected()
            .and_then(|i| self.requests.get(i))
            .and_then(|r| r["trace_id"].as_str())
            .map(str::to_owned)
        else {
            self.trace = None;
            return;
        };
        if self.trace_id.as_deref() == Some(&id) {
            return;
        }
        match self.client.get(&format!("/api/traces/{id}")) {
            Ok(t) => self.trace = Some(t),
            Err(e) => {
                self.trace = None;
                self.error = Some(format!("{e:#}"));
            }
        }
        self.trace_id = Some(id);
    }

    fn draw(&mut self, frame: &mut Frame) {
        let [header, routes, requests, waterfall, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Percentage(32),
            Constraint::Percentage(30),
            Constraint::Min(6),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        self.draw_header(frame, header);
        self.draw_routes(frame, routes);
        self.draw_requests(frame, requests);
        self.draw_waterfall(frame, waterfall);
        frame.render_widget(
            Paragraph::new(KEYS).style(Style::new().fg(Color::Black).bg(Color::Gray)),
            footer,
        );
    }

    fn draw_header(&self, frame: &mut Frame, area: Rect) {
        let s = &self.stats;
        let mut spans = vec![
            Span::styled(
                " tracer top ",
                Style::new()
                    .add_modifier(Modifier::BOLD)
                    .fg(Color::Black)
                    .bg(Color::Cyan),
            ),
            Span::raw(format!(
                " {}  ·  {} spans / {} traces stored, {} traces evicted, {} spans not kept  ·  window {}  ·  ",
                self.client.base,
                s["spans"],
                s["traces"],
                s["traces_evicted"],
                s["spans_not_kept"],
                if self.five_minutes { "5m" } else { "1m" }
            )),
            if self.paused {
                Span::styled(
                    "PAUSED",
                    Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
                )
            } else {
                Span::styled("live", Style::new().fg(Color::Green))
            },
        ];
        if let Some(e) = &self.error {
            spans.push(Span::styled(
                format!("  ·  {e}"),
                Style::new().fg(Color::Red),
            ));
        }
        frame.render_widget(Paragraph::new(Line::from(spans)), area);
    }

    fn block(&self, title: String, pane: Pane) -> Block<'static> {
        let style = if self.pane == pane {
            Style::new().fg(Color::Cyan)
        } else {
            Style::new().fg(Color::DarkGray)
        };
        Block::default()
            .borders(Borders::ALL)
            .border_style(style)
            .title(Span::styled(
                title,
                Style::new().add_modifier(Modifier::BOLD),
            ))
    }

    fn draw_routes(&mut self, frame: &mut Frame, area: Rect) {
        let rows = self.routes.iter().map(|r| {
            let err = f(r, "error_pct");
            let style = if err > 0.0 {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            };
            Row::new(vec![
                Cell::from(str_of(r, "service")),
                Cell::from(str_of(r, "kind")),
                Cell::from(str_of(r, "route")),
                Cell::from(format!("{:.2}", f(r, "rate"))),
                Cell::from(format!("{}", r["count"])),
                Cell::from(format!("{err:.1}%")),
                Cell::from(ms(f(r, "p50_ms"))),
                Cell::from(ms(f(r, "p95_ms"))),
                Cell::from(ms(f(r, "p99_ms"))).style(Style::new().add_modifier(Modifier::BOLD)),
            ])
            .style(style)
        });
        let table = Table::new(
            rows,
            [
                Constraint::Length(18),
                Constraint::Length(7),
                Constraint::Min(24),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(10),
            ],
        )
        .header(header_row(&[
            "SERVICE", "KIND", "ROUTE", "REQ/S", "COUNT", "ERR", "P50", "P95", "P99 ▼",
        ]))
        .row_highlight_style(highlight(self.pane == Pane::Routes))
        .block(self.block(
            format!(" Routes by p99 ({}) ", self.routes.len()),
            Pane::Routes,
        ));
        frame.render_stateful_widget(table, area, &mut self.routes_state);
    }

    fn draw_requests(&mut self, frame: &mut Frame, area: Rect) {
        let now = unix_ms() as f64;
        let rows = self.requests.iter().map(|r| {
            let style = if r["error"].as_bool() == Some(true) {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            };
            Row::new(vec![
                Cell::from(ms(f(r, "duration_ms"))),
                Cell::from(str_of(r, "service")),
                Cell::from(str_of(r, "kind")),
                Cell::from(str_of(r, "name")),
                Cell::from(
                    r["status_code"]
                        .as_i64()
                        .map_or("-".into(), |c| c.to_string()),
                ),
                Cell::from(format!(
                    "{:.0}s ago",
                    ((now - f(r, "start_unix_ms")) / 1000.0).max(0.0)
                )),
                Cell::from(str_of(r, "trace_id")),
            ])
            .style(style)
        });
        let title = match &self.route_filter {
            Some((s, k, r)) => format!(" Slowest requests of {s} {k} {r} (Esc: all) "),
            None => " Slowest recent requests ".to_owned(),
        };
        let table = Table::new(
            rows,
            [
                Constraint::Length(10),
                Constraint::Length(18),
                Constraint::Length(7),
                Constraint::Min(24),
                Constraint::Length(6),
                Constraint::Length(9),
                Constraint::Length(32),
            ],
        )
        .header(header_row(&[
            "DURATION ▼",
            "SERVICE",
            "KIND",
            "REQUEST",
            "STATUS",
            "WHEN",
            "TRACE",
        ]))
        .row_highlight_style(highlight(self.pane == Pane::Requests))
        .block(self.block(title, Pane::Requests));
        frame.render_stateful_widget(table, area, &mut self.requests_state);
    }

    fn draw_waterfall(&self, frame: &mut Frame, area: Rect) {
        let Some(trace) = &self.trace else {
            let block = Block::default().borders(Borders::ALL).title(" Trace ");
            frame.render_widget(
                Paragraph::new(" select a request to see its trace").block(block),
                area,
            );
            return;
        };
        let total = f(trace, "duration_ms").max(1e-6);
        let label_width = 48usize;
        let dur_width = 10usize;
        let bar_width = (area.width as usize)
            .saturating_sub(label_width + dur_width + 20)
            .max(10);
        let mut lines = vec![Line::from(Span::styled(
            format!(
                "{:label_width$} {:>dur_width$}  0{:>w$}",
                "SPAN  (* critical path)",
                "DURATION",
                ms(total),
                w = bar_width - 1
            ),
            Style::new().add_modifier(Modifier::BOLD),
        ))];
        for s in trace["spans"].as_array().into_iter().flatten() {
            let depth = s["depth"].as_u64().unwrap_or(0) as usize;
            let critical = s["critical"].as_bool() == Some(true);
            let label = format!(
                "{}{}{} {} {}",
                if critical { "* " } else { "  " },
                "  ".repeat(depth),
                str_of(s, "service"),
                str_of(s, "kind"),
                str_of(s, "name")
            );
            let label: String = label.chars().take(label_width).collect();
            let (start, dur) = (f(s, "start_ms"), f(s, "duration_ms"));
            let sections: Vec<(f64, f64)> = s["critical_sections"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| (p[0].as_f64().unwrap_or(0.0), p[1].as_f64().unwrap_or(0.0)))
                .collect();
            let bar: String = (0..bar_width)
                .map(|i| {
                    let (a, b) = (
                        total * i as f64 / bar_width as f64,
                        total * (i + 1) as f64 / bar_width as f64,
                    );
                    let inside = b > start && a < start + dur.max(total / bar_width as f64 / 2.0);
                    if !inside {
                        ' '
                    } else if sections.iter().any(|&(x, y)| b > x && a < y) {
                        '█'
                    } else {
                        '░'
                    }
                })
                .collect();
            let color = if s["error"].as_bool() == Some(true) {
                Color::Red
            } else if critical {
                Color::Yellow
            } else {
                Color::Blue
            };
            lines.push(Line::from(vec![
                Span::raw(format!("{label:label_width$} {:>dur_width$}  ", ms(dur))),
                Span::styled(bar, Style::new().fg(color)),
                Span::raw(format!("  via {}", str_of(s, "parent_source"))),
            ]));
        }
        let block = Block::default().borders(Borders::ALL).title(Span::styled(
            format!(
                " Trace {} ({} ms) ",
                str_of(trace, "trace_id"),
                fmt_num(total)
            ),
            Style::new().add_modifier(Modifier::BOLD),
        ));
        frame.render_widget(Paragraph::new(lines).block(block), area);
    }
}

fn header_row(names: &[&'static str]) -> Row<'static> {
    Row::new(names.iter().map(|n| Cell::from(*n)))
        .style(Style::new().add_modifier(Modifier::BOLD).fg(Color::Cyan))
}

fn highlight(focused: bool) -> Style {
    if focused {
        Style::new()
            .bg(Color::DarkGray)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::new().add_modifier(Modifier::UNDERLINED)
    }
}

fn clamp_selection(state: &mut TableState, len: usize) {
    let at = state.selected().unwrap_or(0);
    state.select(Some(at.min(len.saturating_sub(1))));
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

fn str_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("").to_owned()
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// A duration in ms, in the unit that reads best.
fn ms(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} s", x / 1000.0)
    } else if x >= 1.0 {
        format!("{} ms", fmt_num(x))
    } else {
        format!("{:.0} µs", x * 1000.0)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
