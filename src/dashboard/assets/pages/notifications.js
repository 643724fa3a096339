// Notifications: newest first, live; mark one or all read.
import { api, items } from '../api.js';
import { h, fill, busy, loading, empty, errorBox, badge, timeEl, debounce, toast, errorText } from '../ui.js';

const LEVEL = { info: '', warning: 'warn', critical: 'bad' };

export async function render(main, { live }) {
  const list = h('ul', { class: 'rows notifications', 'aria-live': 'polite' }, h('li', {}, loading('Loading notifications')));
  const readAll = h('button', { type: 'button' }, 'Mark all read');
  readAll.addEventListener('click', () => busy(readAll, 'Marking…', async () => {
    await api('notifications/read-all', { method: 'POST' });
    changed();
    await load();
  }));
  fill(main, h('h1', {}, 'Notifications'), readAll, list);
  const changed = () => window.dispatchEvent(new CustomEvent('wagate:notifications-changed'));

  async function load() {
    try {
      const ns = items(await api('notifications?limit=100'));
      fill(list, ns.length ? ns.map((n) => h('li', { class: n.read ? 'read' : 'unread-row' },
        badge(n.level, LEVEL[n.level] || ''), ' ', h('strong', {}, n.title), ' ', timeEl(n.created_at),
        h('p', {}, n.body),
        n.read ? null : h('button', {
          type: 'button', class: 'link',
          onclick: async () => {
            try {
              await api(`notifications/${n.id}/read`, { method: 'PATCH' });
              changed();
              await load();
            } catch (err) { toast(errorText(err), 'error'); }
          },
        }, 'Mark read')))
        : h('li', {}, empty('Nothing to report.')));
    } catch (err) {
      fill(list, h('li', {}, errorBox(err)));
    }
  }
  const reload = debounce(load, 150);
  await load();
  return live.on((e) => { if (e.type.startsWith('notification.')) reload(); });
}
