// Admin: the live supervision tree; restart a session's actor or a whole pool.
import { api } from '../api.js';
import { h, fill, field, busy, loading, empty, errorBox, badge, toast } from '../ui.js';

export async function render(main) {
  const tree = h('div', { class: 'tree', 'aria-live': 'polite' }, loading('Loading the actor tree'));
  const title = h('input', { type: 'text', required: true, maxlength: '200' });
  const body = h('textarea', { rows: '2', required: true });
  const level = h('select', {}, ['info', 'warning', 'critical'].map((l) => h('option', { value: l }, l)));
  const send = h('button', { type: 'submit' }, 'Notify every tenant');
  const notify = h('form', {
    class: 'card',
    onsubmit: (ev) => {
      ev.preventDefault();
      busy(send, 'Sending…', async () => {
        await api('admin/notifications', { method: 'POST', body: { title: title.value, body: body.value, level: level.value } });
        toast('Notification sent');
        title.value = body.value = '';
      });
    },
  }, h('h2', {}, 'Notify every tenant'), field('Title', title), field('Text', body), field('Level', level), send);
  const refresh = h('button', { type: 'button', onclick: () => load() }, 'Refresh');
  fill(main, h('h1', {}, 'Admin'), h('h2', {}, 'Actor tree'), refresh, tree, notify);

  async function load() {
    try {
      const t = await api('admin/actors');
      fill(tree,
        h('p', {}, `Node ${t.node}, up ${Math.round(t.uptime_secs / 60)} min`, t.stopping ? badge('stopping', 'bad') : ''),
        t.pools.length ? h('ul', { class: 'tree-root' }, t.pools.map((p) => h('li', {},
          h('strong', {}, `Pool ${p.tier}`), ` ${p.arbiters.length} arbiters, ${p.restarts_total} restarts `,
          h('button', {
            type: 'button',
            onclick: (ev) => busy(ev.currentTarget, 'Restarting…', async () => {
              const r = await api(`admin/pools/${p.tier}/restart`, { method: 'POST' });
              toast(`${r.restarted} sessions restarted`);
              await load();
            }),
          }, `Restart pool ${p.tier}`),
          h('ul', {}, p.arbiters.map((a) => h('li', {},
            `Arbiter ${a.id} `, badge(a.alive ? 'alive' : 'down', a.alive ? 'ok' : 'bad'),
            h('ul', {}, a.sessions.map((s) => h('li', {},
              h('code', {}, s.id.slice(0, 8)), ' ', badge(String(s.status), s.alive ? 'ok' : 'bad'),
              ` restarts ${s.restarts ?? 0} `,
              h('button', {
                type: 'button', class: 'link',
                onclick: (ev) => busy(ev.currentTarget, 'Restarting…', async () => {
                  await api(`admin/sessions/${s.id}/restart`, { method: 'POST' });
                  toast('Session restarted');
                  await load();
                }),
              }, 'Restart'))))))))))
          : empty('No pool is running.'));
    } catch (err) {
      fill(tree, errorBox(err));
    }
  }
  await load();
  return null;
}
