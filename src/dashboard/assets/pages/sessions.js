// Sessions: create, start, the live QR code, status, restart / stop / log out.
import { api, items } from '../api.js';
import { h, mayChange, fill, field, busy, loading, empty, errorBox, badge, timeEl, debounce, toast, errorText } from '../ui.js';

const STATUS_KIND = { connected: 'ok', qr: 'warn', pairing: 'warn', starting: 'warn', reconnecting: 'warn', failed: 'bad', logged_out: 'bad' };

export async function render(main, { live, who }) {
  const list = h('div', { class: 'sessions', 'aria-live': 'polite' }, loading('Loading sessions'));
  const name = h('input', { type: 'text', name: 'name', required: true, maxlength: '100', placeholder: 'Front desk' });
  const create = h('button', { type: 'submit', class: 'primary' }, 'Create session');
  const readOnly = !mayChange(who);
  const form = h('form', {
    class: 'inline-form', hidden: readOnly,
    onsubmit: (ev) => {
      ev.preventDefault();
      busy(create, 'Creating…', async () => {
        const s = await api('sessions', { method: 'POST', body: { name: name.value.trim() } });
        name.value = '';
        toast(`Session “${s.name}” created`);
        await load();
      });
    },
  }, field('New session name', name), create);
  fill(main, h('h1', {}, 'Sessions'), form, list);

  const qrs = new Map();
  async function showQr(session, box) {
    try {
      const qr = await api(`sessions/${session.id}/qr`);
      fill(box,
        h('img', { class: 'qr', src: qr.data_url, alt: `QR code to link “${session.name}”: scan it with WhatsApp on the phone`, width: '240', height: '240' }),
        h('p', { class: 'muted' }, 'Open WhatsApp → Linked devices → Link a device, and scan. It refreshes by itself.'));
    } catch (err) {
      if (err.code !== 'session_not_in_qr_state') fill(box, errorBox(err));
    }
  }

  function row(s) {
    const actions = h('div', { class: 'actions' });
    const act = (label, progress, path) => h('button', {
      type: 'button', hidden: readOnly,
      onclick: (ev) => busy(ev.currentTarget, progress, async () => {
        await api(`sessions/${s.id}/${path}`, { method: 'POST' });
        await load();
      }),
    }, label);
    if (['stopped', 'failed', 'logged_out'].includes(s.status)) actions.append(act('Start', 'Starting…', 'start'));
    if (!['stopped', 'logged_out'].includes(s.status)) actions.append(act('Stop', 'Stopping…', 'stop'), act('Restart', 'Restarting…', 'restart'));
    if (s.status === 'connected') actions.append(act('Log out', 'Logging out…', 'logout'));
    const qrBox = h('div', { class: 'qr-box', 'aria-live': 'polite' });
    if (s.status === 'qr') {
      qrs.set(s.id, qrBox);
      showQr(s, qrBox);
    }
    return h('article', { class: 'session card', dataset: { sessionId: s.id, status: s.status } },
      h('header', {},
        h('h2', {}, s.name),
        badge(s.status.replace('_', ' '), STATUS_KIND[s.status] || '')),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Phone'), h('dd', {}, s.phone || '—'),
        h('dt', {}, 'Tier'), h('dd', {}, s.tier),
        h('dt', {}, 'Updated'), h('dd', {}, timeEl(s.updated_at)),
        s.last_error ? [h('dt', {}, 'Last error'), h('dd', { class: 'error-text' }, s.last_error)] : null),
      qrBox, actions,
      s.status === 'connected' ? h('a', { href: `#/chats/${s.id}` }, 'Open chats') : null);
  }

  async function load() {
    try {
      const sessions = items(await api('sessions?limit=200'));
      qrs.clear();
      fill(list, sessions.length ? sessions.map(row) : empty('No session yet: create one, start it and scan its QR code.'));
    } catch (err) {
      fill(list, errorBox(err));
    }
  }
  const reload = debounce(load, 200);
  await load();
  return live.on((e) => {
    if (!e.type.startsWith('session.')) return;
    if (e.type === 'session.qr' && qrs.has(e.session_id)) {
      // A new code: only the image changes.
      api(`sessions/${e.session_id}`).then((s) => showQr(s, qrs.get(e.session_id))).catch((err) => toast(errorText(err), 'error'));
      return;
    }
    reload();
  });
}
