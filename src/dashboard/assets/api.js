// The public API, as the logged-in member: their JWT travels in an HttpOnly cookie the page
// cannot read; changes repeat the CSRF cookie's value in X-CSRF-Token.

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || body || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || null;
    this.details = e.details || null;
  }
}

function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)wagate_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : '';
}

/** `api('sessions')` → GET /api/v1/sessions; paths starting with `/` are taken as they are. */
export async function api(path, { method = 'GET', body, headers = {} } = {}) {
  const url = path.startsWith('/') ? path : `/api/v1/${path}`;
  const h = { Accept: 'application/json', ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  if (method !== 'GET') h['X-CSRF-Token'] = csrfToken();
  let res;
  try {
    res = await fetch(url, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
    });
  } catch (err) {
    throw new ApiError(0, { message: `the server cannot be reached (${err.message})`, code: 'network' });
  }
  const text = res.status === 204 ? '' : await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { message: text }; }
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data);
    if (res.status === 401 && !url.startsWith('/dashboard/')) {
      window.dispatchEvent(new CustomEvent('wagate:unauthorized', { detail: err }));
    }
    throw err;
  }
  return data;
}

/** The items of a page (`{items, next_cursor}`) or a plain list. */
export function items(page) {
  return Array.isArray(page) ? page : (page && page.items) || [];
}

/**
 * The tenant's live events over one WebSocket. Reconnects by itself and resumes after the
 * last event it saw (`?since=`), so nothing is missed across a drop.
 */
export class Live {
  constructor() {
    this.handlers = new Set();
    this.statusHandlers = new Set();
    this.lastId = null;
    this.ws = null;
    this.stopped = true;
    this.retry = 500;
  }

  on(fn) {
    this.handlers.add(fn);
    return () => this.handlers.delete(fn);
  }

  onStatus(fn) {
    this.statusHandlers.add(fn);
    return () => this.statusHandlers.delete(fn);
  }

  status(s) {
    this.state = s;
    for (const fn of this.statusHandlers) fn(s);
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const since = this.lastId === null ? '' : `?since=${this.lastId}`;
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/events${since}`);
    this.ws = ws;
    ws.onopen = () => { this.retry = 500; this.status('live'); };
    ws.onmessage = (m) => {
      let event;
      try { event = JSON.parse(m.data); } catch { return; }
      if (!event || !event.type) return;
      if (typeof event.id === 'number') this.lastId = event.id;
      for (const fn of this.handlers) {
        try { fn(event); } catch (err) { console.error(err); }
      }
    };
    ws.onclose = () => {
      if (this.ws !== ws || this.stopped) return;
      this.status('reconnecting');
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 10000);
    };
  }

  stop() {
    this.stopped = true;
    if (this.ws) this.ws.close();
    this.ws = null;
  }
}
