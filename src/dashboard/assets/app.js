// The dashboard's shell: who is logged in, the navigation, the notification bell, the live
// event stream, and the router (`#/page/…` picks the page module).
import { api, Live } from './api.js';
import { h, svg, fill, toast, timeZone, errorText } from './ui.js';

const PAGES = {
  login: () => import('./pages/login.js'),
  sessions: () => import('./pages/sessions.js'),
  chats: () => import('./pages/chats.js'),
  board: () => import('./pages/board.js'),
  agents: () => import('./pages/agents.js'),
  automation: () => import('./pages/automation.js'),
  webhooks: () => import('./pages/webhooks.js'),
  notifications: () => import('./pages/notifications.js'),
  stats: () => import('./pages/stats.js'),
  admin: () => import('./pages/admin.js'),
};

const TENANT_NAV = [
  ['sessions', 'Sessions'], ['chats', 'Chats'], ['board', 'Board'], ['agents', 'Agents'],
  ['automation', 'Automation'], ['webhooks', 'Webhooks'], ['stats', 'Statistics'],
];

const ctx = { who: null, live: new Live(), cleanup: null, expiryTimer: null, bell: null };

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  return { page: parts[0] || '', params: parts.slice(1) };
}

export function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function home() {
  return ctx.who && ctx.who.kind === 'admin' ? '#/admin' : '#/sessions';
}

async function loggedIn(who) {
  ctx.who = who;
  clearTimeout(ctx.expiryTimer);
  if (who.expires_at) {
    const ms = new Date(who.expires_at).getTime() - Date.now();
    // The login ends with its token: back to the login page, saying why.
    ctx.expiryTimer = setTimeout(() => expired('Your login has expired: log in again.'), Math.max(ms, 0));
  }
  // A new login: the previous one's listeners go.
  for (const off of ctx.offs || []) off();
  ctx.offs = [];
  ctx.bell = who.kind === 'admin' ? null : bell();
  ctx.liveDot = liveIndicator();
  if (who.kind !== 'admin') ctx.live.start();
}

function liveIndicator() {
  const dot = h('span', { class: 'live-dot', title: 'Live updates' });
  const text = h('span', { class: 'sr-only' }, 'Live updates: connecting');
  ctx.offs.push(ctx.live.onStatus((s) => {
    dot.dataset.state = s;
    text.textContent = `Live updates: ${s}`;
  }));
  return [dot, text];
}

function expired(message) {
  if (!ctx.who) return;
  ctx.who = null;
  ctx.live.stop();
  clearTimeout(ctx.expiryTimer);
  sessionStorage.setItem('wagate.loginMessage', message);
  navigate('#/login');
}

async function logout() {
  try { await api('/dashboard/logout', { method: 'POST' }); } catch (err) { toast(errorText(err), 'error'); }
  ctx.who = null;
  ctx.live.stop();
  clearTimeout(ctx.expiryTimer);
  navigate('#/login');
}

function bell() {
  const count = h('span', { class: 'bell-count', 'data-count': '0' }, '0');
  const link = h('a', { href: '#/notifications', class: 'bell', 'aria-label': 'Notifications: 0 unread' },
    // Drawn, not an emoji: the machine may have no emoji font.
    svg('svg', { viewBox: '0 0 24 24', width: 22, height: 22, 'aria-hidden': 'true', class: 'bell-icon' },
      svg('path', { d: 'M12 3a6 6 0 0 0-6 6v4l-2 3h16l-2-3V9a6 6 0 0 0-6-6zm-2 15a2 2 0 0 0 4 0' })),
    count);
  const set = (n) => {
    count.textContent = n > 99 ? '99+' : String(n);
    count.dataset.count = String(n);
    count.hidden = n === 0;
    link.setAttribute('aria-label', `Notifications: ${n} unread`);
  };
  const refresh = async () => {
    try { set((await api('notifications/unread-count')).count); } catch { /* shown elsewhere */ }
  };
  set(0);
  refresh();
  ctx.offs.push(ctx.live.on((e) => {
    if (e.type === 'notification.created' || e.type === 'notification.read') refresh();
  }));
  window.addEventListener('wagate:notifications-changed', refresh);
  ctx.offs.push(() => window.removeEventListener('wagate:notifications-changed', refresh));
  return link;
}

function shell(page) {
  const who = ctx.who;
  const nav = who.kind === 'admin' ? [['admin', 'Admin'], ['stats', 'Statistics']] : TENANT_NAV;
  const role = who.kind === 'admin' ? 'admin' : `${who.kind === 'member' ? 'member' : 'API key'} · ${who.role}`;
  const menu = h('button', {
    class: 'menu-toggle', 'aria-expanded': 'false', 'aria-controls': 'main-nav',
    onclick: (ev) => {
      const open = ev.currentTarget.getAttribute('aria-expanded') !== 'true';
      ev.currentTarget.setAttribute('aria-expanded', String(open));
      navEl.classList.toggle('open', open);
    },
  }, 'Menu');
  const navEl = h('nav', { id: 'main-nav', 'aria-label': 'Main' },
    h('ul', {}, nav.map(([id, label]) => h('li', {},
      h('a', { href: `#/${id}`, 'aria-current': id === page ? 'page' : null }, label)))));
  const main = h('main', { id: 'main', tabindex: '-1' });
  const header = h('header', { class: 'top' },
    h('a', { class: 'brand', href: home() }, 'wagate'),
    menu, navEl,
    h('div', { class: 'who' },
      ctx.bell,
      who.kind === 'admin' ? null : ctx.liveDot,
      h('span', { class: 'role', title: `Times in ${timeZone}` }, role),
      h('button', { class: 'link', onclick: logout }, 'Log out')));
  const root = document.getElementById('app');
  fill(root, h('a', { class: 'skip', href: '#main', onclick: (e) => { e.preventDefault(); main.focus(); } }, 'Skip to content'),
    header, main, h('div', { id: 'announcer', class: 'sr-only', 'aria-live': 'assertive' }));
  return main;
}

let renderSeq = 0;
async function render() {
  const seq = ++renderSeq;
  if (ctx.cleanup) { try { ctx.cleanup(); } catch { /* page gone */ } ctx.cleanup = null; }
  let { page, params } = route();
  if (!ctx.who && page !== 'login') {
    try {
      await loggedIn(await api('/dashboard/me'));
    } catch {
      page = 'login';
      if (location.hash !== '#/login') history.replaceState(null, '', '#/login');
    }
  }
  if (seq !== renderSeq) return;
  if (page === 'login') {
    const mod = await PAGES.login();
    const root = document.getElementById('app');
    fill(root);
    mod.render(root, { onLogin: async (who) => { await loggedIn(who); navigate(home()); } });
    return;
  }
  if (!PAGES[page]) { navigate(home()); return; }
  const main = shell(page);
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · wagate`;
  try {
    const mod = await PAGES[page]();
    if (seq !== renderSeq) return;
    ctx.cleanup = (await mod.render(main, { who: ctx.who, live: ctx.live, params, navigate })) || null;
    // When the page had its data and was drawn (what "loaded" means to the member).
    performance.mark('wagate:page-rendered');
  } catch (err) {
    fill(main, h('p', { class: 'error', role: 'alert' }, errorText(err)));
  }
}

window.addEventListener('wagate:unauthorized', (e) => {
  const msg = e.detail && e.detail.message;
  expired(msg && /expired/.test(msg) ? 'Your login has expired: log in again.' : `You were logged out: ${msg || 'log in again'}.`);
});
window.addEventListener('hashchange', render);
render();
