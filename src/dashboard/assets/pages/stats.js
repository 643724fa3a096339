// Statistics: the overview's figures and the messages' time series as an SVG chart.
import { api } from '../api.js';
import { h, fill, svg, field, loading, errorBox } from '../ui.js';

const pct = (r) => (r === null || r === undefined ? '—' : `${(r * 100).toFixed(1)} %`);
const ms = (v) => (v === null || v === undefined ? '—' : v >= 60000 ? `${(v / 60000).toFixed(1)} min` : `${(v / 1000).toFixed(1)} s`);

/** A bar chart of messages in and out per point (hour or day), drawn as SVG. */
function chart(series) {
  const W = 720, H = 240, P = { l: 40, r: 10, t: 10, b: 40 };
  const pts = series.items;
  const max = Math.max(1, ...pts.map((p) => Math.max(p.in, p.out)));
  const bw = (W - P.l - P.r) / Math.max(1, pts.length);
  const y = (v) => H - P.b - (v / max) * (H - P.t - P.b);
  const bars = [];
  pts.forEach((p, i) => {
    const x = P.l + i * bw;
    const w = Math.max(1, bw / 2 - 1);
    bars.push(svg('rect', { x, y: y(p.in), width: w, height: H - P.b - y(p.in), class: 'bar-in' }, svg('title', {}, `${p.local}: ${p.in} in`)));
    bars.push(svg('rect', { x: x + w, y: y(p.out), width: w, height: H - P.b - y(p.out), class: 'bar-out' }, svg('title', {}, `${p.local}: ${p.out} out`)));
  });
  const every = Math.ceil(pts.length / 8);
  const labels = pts.map((p, i) => (i % every === 0
    ? svg('text', { x: P.l + i * bw, y: H - P.b + 16, class: 'axis' }, series.interval === 'hour' ? p.local.slice(11, 16) : p.local.slice(5, 10))
    : null));
  const total = pts.reduce((a, p) => ({ in: a.in + p.in, out: a.out + p.out }), { in: 0, out: 0 });
  return h('figure', { class: 'chart' },
    svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `Messages per ${series.interval}: ${total.in} in and ${total.out} out over ${pts.length} ${series.interval}s` },
      svg('line', { x1: P.l, y1: H - P.b, x2: W - P.r, y2: H - P.b, class: 'axis-line' }),
      svg('text', { x: 4, y: P.t + 10, class: 'axis' }, String(max)),
      svg('text', { x: 4, y: H - P.b, class: 'axis' }, '0'),
      bars, labels),
    h('figcaption', {}, h('span', { class: 'key in' }, 'in'), ' ', h('span', { class: 'key out' }, 'out'),
      ` per ${series.interval}, ${series.time_zone}`));
}

function figure(label, value) {
  return h('div', { class: 'figure' }, h('span', { class: 'figure-value' }, value), h('span', { class: 'figure-label' }, label));
}

export async function render(main, { who }) {
  const period = h('select', {},
    h('option', { value: 'today' }, 'Today'), h('option', { value: '7' }, 'Last 7 days'), h('option', { value: '30' }, 'Last 30 days'));
  const figures = h('div', { class: 'figures', 'aria-live': 'polite' }, loading('Loading figures'));
  const graph = h('div', {}, loading('Loading the chart'));
  fill(main, h('h1', {}, 'Statistics'), field('Period', period), figures, h('h2', {}, 'Messages'), graph);

  if (who.kind === 'admin') {
    try {
      const s = await api('admin/stats');
      fill(figures, Object.entries(s).filter(([, v]) => typeof v !== 'object').map(([k, v]) => figure(k.replaceAll('_', ' '), String(v))),
        h('pre', { class: 'raw' }, JSON.stringify(s, null, 2)));
    } catch (err) { fill(figures, errorBox(err)); }
    fill(graph, h('p', { class: 'muted' }, 'Per tenant charts are on the tenants’ own dashboards.'));
    period.disabled = true;
    return null;
  }

  async function load() {
    const days = period.value === 'today' ? 0 : Number(period.value);
    const from = new Date(Date.now() - days * 86400000).toISOString().slice(0, 10);
    const q = days ? `?from=${from}` : '';
    fill(figures, loading('Loading figures'));
    try {
      const o = await api(`stats/overview${q}`);
      fill(figures,
        figure('Messages in', o.messages.in), figure('Messages out', o.messages.out),
        figure('By the bot', o.messages.out_bot), figure('Failed', o.messages.failed),
        figure('Delivery rate', pct(o.messages.delivery_rate)), figure('Read rate', pct(o.messages.read_rate)),
        figure('First response (people)', ms(o.first_response.human && o.first_response.human.avg_ms)),
        figure('First response (bot)', ms(o.first_response.bot && o.first_response.bot.avg_ms)),
        figure('Active chats (24 h)', o.active_chats_24h),
        figure('Sessions', o.sessions.total),
        figure('Webhook success', pct(o.webhooks.success_rate)));
    } catch (err) { fill(figures, errorBox(err)); }
    fill(graph, loading('Loading the chart'));
    try {
      const interval = days > 2 ? 'day' : 'hour';
      const s = await api(`stats/messages?interval=${interval}${days ? `&from=${from}` : ''}`);
      fill(graph, chart(s));
    } catch (err) { fill(graph, errorBox(err)); }
  }
  period.addEventListener('change', load);
  await load();
  return null;
}
