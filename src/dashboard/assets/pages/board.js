// The kanban board: columns of cards; drag a card to another column with the pointer, or
// with the keyboard (Space picks it up, arrows choose the column and place, Space drops,
// Escape cancels). Moves by other members show up live.
import { api, items } from '../api.js';
import { h, mayChange, fill, field, busy, loading, empty, errorBox, badge, debounce, toast, errorText, announce } from '../ui.js';

export async function render(main, { live, params, navigate, who }) {
  const readOnly = !mayChange(who);
  let boards;
  try {
    boards = items(await api('boards?limit=100'));
  } catch (err) {
    fill(main, h('h1', {}, 'Board'), errorBox(err));
    return null;
  }
  const newName = h('input', { type: 'text', required: true, maxlength: '200', placeholder: 'Sales' });
  const createBtn = h('button', { type: 'submit' }, 'Create board');
  const createForm = h('form', {
    class: 'inline-form', hidden: readOnly,
    onsubmit: (ev) => {
      ev.preventDefault();
      busy(createBtn, 'Creating…', async () => {
        const b = await api('boards', { method: 'POST', body: { name: newName.value.trim() } });
        navigate(`#/board/${b.id}`);
      });
    },
  }, field('New board', newName), createBtn);
  if (!boards.length) {
    fill(main, h('h1', {}, 'Board'), empty('No board yet.'), createForm);
    return null;
  }
  const boardId = boards.some((b) => b.id === params[0]) ? params[0] : boards[0].id;
  const picker = h('select', { onchange: () => navigate(`#/board/${picker.value}`) },
    boards.map((b) => h('option', { value: b.id, selected: b.id === boardId }, b.name)));
  const area = h('div', { class: 'board', role: 'region', 'aria-label': 'Board columns' }, loading('Loading the board'));
  const help = h('p', { class: 'muted', id: 'board-help' },
    'Drag a card to another column, or focus it and press Space, then the arrow keys, then Space again (Escape cancels).');
  const title = h('input', { type: 'text', required: true, maxlength: '500', placeholder: 'New lead' });
  const column = h('select', {});
  const addBtn = h('button', { type: 'submit' }, 'Add card');
  const addForm = h('form', {
    class: 'inline-form', hidden: readOnly,
    onsubmit: (ev) => {
      ev.preventDefault();
      busy(addBtn, 'Adding…', async () => {
        await api(`boards/${boardId}/cards`, { method: 'POST', body: { column_id: column.value, title: title.value.trim() } });
        title.value = '';
        await load();
      });
    },
  }, field('Card title', title), field('Column', column), addBtn);
  fill(main, h('h1', {}, 'Board'), h('div', { class: 'toolbar' }, field('Board', picker), createForm), addForm, help, area);

  let board = null;
  async function load() {
    try {
      board = await api(`boards/${boardId}`);
    } catch (err) {
      fill(area, errorBox(err));
      return;
    }
    const keep = column.value;
    fill(column, board.columns.map((c) => h('option', { value: c.id, selected: c.id === keep }, c.name)));
    draw();
  }

  function draw(focusCard) {
    fill(area, board.columns.map((c) => h('section', { class: 'column', dataset: { columnId: c.id }, 'aria-label': `Column ${c.name}` },
      h('h2', {}, c.name, ' ', badge(String(c.cards.length) + (c.wip_limit ? ` / ${c.wip_limit}` : ''))),
      h('ul', { class: 'cards' }, c.cards.length ? c.cards.map((card) => cardEl(card, c)) : h('li', { class: 'empty drop-hint' }, 'No card')))));
    if (focusCard) {
      const el = area.querySelector(`[data-card-id="${focusCard}"]`);
      if (el) el.focus();
    }
  }

  function cardEl(card, col) {
    const el = h('li', {
      class: 'kcard', tabindex: '0', dataset: { cardId: card.id },
      'aria-describedby': 'board-help',
      'aria-label': `${card.title}, in ${col.name}`,
    },
    h('strong', {}, card.title),
    card.chat ? h('a', { href: `#/chats/${card.session_id}/${encodeURIComponent(card.chat)}`, class: 'chip', tabindex: '-1' }, card.chat) : null,
    (card.labels || []).map((l) => h('span', { class: 'chip' }, l)),
    card.value !== null && card.value !== undefined ? h('span', { class: 'muted' }, ` ${card.value}`) : null);
    if (!readOnly) {
      el.addEventListener('pointerdown', (ev) => startDrag(ev, el, card));
      el.addEventListener('keydown', (ev) => keyMove(ev, el, card));
    }
    return el;
  }

  // Where a card is in the board now: column index and index in it.
  function place(cardId) {
    for (let ci = 0; ci < board.columns.length; ci++) {
      const i = board.columns[ci].cards.findIndex((c) => c.id === cardId);
      if (i >= 0) return { ci, i };
    }
    return null;
  }

  async function move(cardId, columnId, position) {
    const from = place(cardId);
    const target = board.columns.find((c) => c.id === columnId);
    if (!from || !target) return;
    // Drawn at once; the server's answer (or the error) settles it.
    const [card] = board.columns[from.ci].cards.splice(from.i, 1);
    target.cards.splice(Math.min(position, target.cards.length), 0, { ...card, column_id: columnId });
    draw(cardId);
    try {
      await api(`boards/${boardId}/cards/${cardId}/move`, { method: 'POST', body: { column_id: columnId, position } });
      announce(`${card.title} moved to ${target.name}`);
    } catch (err) {
      toast(errorText(err), 'error');
    }
    await load();
    const again = area.querySelector(`[data-card-id="${cardId}"]`);
    if (again) again.focus();
  }

  // The keyboard: Space or Enter lifts, arrows move the lifted card, Space/Enter drops.
  let lifted = null;
  function keyMove(ev, el, card) {
    const p = place(card.id);
    if (!p) return;
    if (ev.key === ' ' || ev.key === 'Enter') {
      ev.preventDefault();
      if (!lifted) {
        lifted = { id: card.id, ci: p.ci, i: p.i, from: p };
        el.classList.add('lifted');
        announce(`${card.title} picked up. Arrow keys move it, Space drops it, Escape cancels.`);
      } else {
        const target = board.columns[lifted.ci];
        const pos = lifted.i;
        const moved = lifted.ci !== lifted.from.ci || lifted.i !== lifted.from.i;
        lifted = null;
        if (moved) move(card.id, target.id, pos);
        else draw(card.id);
      }
      return;
    }
    if (!lifted || lifted.id !== card.id) return;
    if (ev.key === 'Escape') {
      lifted = null;
      draw(card.id);
      announce('Move cancelled');
      return;
    }
    const dc = { ArrowLeft: -1, ArrowRight: 1 }[ev.key] || 0;
    const di = { ArrowUp: -1, ArrowDown: 1 }[ev.key] || 0;
    if (!dc && !di) return;
    ev.preventDefault();
    lifted.ci = Math.max(0, Math.min(board.columns.length - 1, lifted.ci + dc));
    const len = board.columns[lifted.ci].cards.filter((c) => c.id !== card.id).length;
    lifted.i = dc ? Math.min(lifted.i, len) : Math.max(0, Math.min(len, lifted.i + di));
    // Shows the card where it would land.
    const target = area.querySelectorAll('.column')[lifted.ci].querySelector('.cards');
    const others = [...target.children].filter((c) => c !== el && c.classList.contains('kcard'));
    target.querySelectorAll('.drop-hint').forEach((n) => n.remove());
    target.insertBefore(el, others[lifted.i] || null);
    el.focus();
    announce(`${board.columns[lifted.ci].name}, position ${lifted.i + 1}`);
  }

  // The pointer (mouse, touch, pen): a drag starts after a few pixels of movement.
  function startDrag(ev, el, card) {
    if (ev.button !== 0 || ev.target.closest('a')) return;
    const start = { x: ev.clientX, y: ev.clientY };
    let ghost = null;
    let over = null;
    const onMove = (e) => {
      if (!ghost) {
        if (Math.hypot(e.clientX - start.x, e.clientY - start.y) < 5) return;
        ghost = el.cloneNode(true);
        ghost.classList.add('ghost');
        ghost.style.width = `${el.offsetWidth}px`;
        document.body.append(ghost);
        el.classList.add('dragging');
      }
      ghost.style.left = `${e.clientX - 20}px`;
      ghost.style.top = `${e.clientY - 10}px`;
      const under = document.elementFromPoint(e.clientX, e.clientY);
      const col = under && under.closest('.column');
      if (over && over !== col) over.classList.remove('drop-target');
      over = col;
      if (col) col.classList.add('drop-target');
    };
    const onUp = (e) => {
      document.removeEventListener('pointermove', onMove);
      document.removeEventListener('pointerup', onUp);
      if (!ghost) return;
      ghost.remove();
      el.classList.remove('dragging');
      if (over) over.classList.remove('drop-target');
      if (!over) return;
      const columnId = over.dataset.columnId;
      const cards = [...over.querySelectorAll('.kcard')].filter((c) => c !== el);
      let position = cards.findIndex((c) => {
        const r = c.getBoundingClientRect();
        return e.clientY < r.top + r.height / 2;
      });
      if (position < 0) position = cards.length;
      const p = place(card.id);
      if (p && board.columns[p.ci].id === columnId && p.i === position) return;
      move(card.id, columnId, position);
    };
    document.addEventListener('pointermove', onMove);
    document.addEventListener('pointerup', onUp);
  }

  const reload = debounce(() => { if (!lifted) load(); }, 150);
  await load();
  return live.on((e) => {
    if (e.type.startsWith('card.') && (!e.data || !e.data.board_id || e.data.board_id === boardId)) reload();
  });
}
