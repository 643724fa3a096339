// Webhooks: endpoints, their deliveries, replaying a dead letter.
import { api, items } from '../api.js';
import { h, mayConfigure, fill, field, busy, loading, empty, errorBox, badge, timeEl, toast } from '../ui.js';

export async function render(main, { who }) {
  const readOnly = !mayConfigure(who);
  const list = h('div', {}, loading('Loading webhooks'));
  const deliveries = h('section', { 'aria-label': 'Deliveries' });
  const url = h('input', { type: 'url', required: true, placeholder: 'https://example.com/hooks/whatsapp' });
  const events = h('input', { type: 'text', value: 'message.received,message.status', required: true });
  const add = h('button', { type: 'submit' }, 'Add webhook');
  const form = h('form', {
    class: 'inline-form', hidden: readOnly,
    onsubmit: (ev) => {
      ev.preventDefault();
      busy(add, 'Adding…', async () => {
        const w = await api('webhooks', { method: 'POST', body: { url: url.value.trim(), events: events.value.split(',').map((e) => e.trim()).filter(Boolean) } });
        toast(`Webhook added. Its signing secret (shown once): ${w.secret}`);
        url.value = '';
        await load();
      });
    },
  }, field('URL', url), field('Events (comma-separated)', events), add);
  fill(main, h('h1', {}, 'Webhooks'), form, list, deliveries);

  async function showDeliveries(w) {
    fill(deliveries, h('h2', {}, `Deliveries to ${w.url}`), loading('Loading deliveries'));
    try {
      const ds = items(await api(`webhooks/${w.id}/deliveries?limit=100`));
      fill(deliveries, h('h2', {}, `Deliveries to ${w.url}`), ds.length ? h('table', {},
        h('thead', {}, h('tr', {}, ['Event', 'Status', 'Attempts', 'Last answer', 'When', ''].map((c, i) => h('th', { scope: 'col' }, c || h('span', { class: 'sr-only' }, `Column ${i + 1}`))))),
        h('tbody', {}, ds.map((d) => h('tr', {},
          h('td', {}, d.event_type || d.event_id), h('td', {}, badge(d.status, d.status === 'dead' ? 'bad' : d.status === 'delivered' ? 'ok' : 'warn')),
          h('td', {}, d.attempts), h('td', {}, d.last_status_code || d.last_error || ''), h('td', {}, timeEl(d.created_at)),
          h('td', {}, d.status === 'dead' && !readOnly ? h('button', {
            type: 'button',
            onclick: (ev) => busy(ev.currentTarget, 'Replaying…', async () => {
              await api(`webhooks/${w.id}/deliveries/${d.id}/replay`, { method: 'POST' });
              toast('Queued again');
              await showDeliveries(w);
            }),
          }, 'Replay') : ''))))) : empty('No delivery yet.'));
    } catch (err) { fill(deliveries, errorBox(err)); }
  }

  async function load() {
    try {
      const ws = items(await api('webhooks?limit=100'));
      fill(list, ws.length ? h('ul', { class: 'rows' }, ws.map((w) => h('li', {},
        h('strong', {}, w.url), ' ', badge(w.enabled === false ? 'disabled' : 'enabled'), ' ',
        h('span', { class: 'muted' }, (w.events || []).join(', ')), ' ',
        h('button', { type: 'button', onclick: () => showDeliveries(w) }, 'Deliveries'))))
        : empty('No webhook yet.'));
    } catch (err) { fill(list, errorBox(err)); }
  }
  await load();
  return null;
}
