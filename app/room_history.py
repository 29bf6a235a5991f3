"""The room's history for the chat app: older pages, search and "New since
you left". Tk thread only.

How this works: ``ChatApp`` routes here what concerns the history (the
welcome, each chat message, ``HistoryLoaded``, ``SearchFound``, errors in
reply to ``history`` or ``search``) and the view calls in when the person
reaches the top of the transcript, searches or chooses a result. Only
what the welcome's ``features`` offer is asked for (``history-pages``,
``search``): an old server gets no request, and the search pane says it
cannot search.

Every answer is matched to its request: pages by their ``before`` (a
page for the transcript, or a search result's context: ``history`` with
``before`` = its id + ``CONTEXT_AROUND`` + 1, ids being shared with
private messages, so the page around it is approximate), results by
their query, and an error in reply to ``history`` answers the oldest
history request (the server answers in order). What a connection asked
is forgotten when it ends.

"New since you left": each room (``server_key``: its pinned fingerprint,
else its address) has the last public message id the person saw there,
in ``LastSeen``: seen is what was shown while the window had the focus
and the newest line was in view, or one's own. On return, the view puts
a divider above the first newer message of others (in the welcome's
replay, or in up to ``WALK_PAGES`` pages loaded to reach it), shows it at
the top, and they count towards the title's unread count (``add_unread``),
which the app clears as ever when the person reads to the end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from app.chat_view import ChatView
from app.last_seen import LastSeen, server_key
from app.network import ChatClient, HistoryLoaded, SearchFound, Welcomed
from server.protocol import ChatMessage, Error

PAGE_SIZE = 100  # messages an older page asks for
SEARCH_LIMIT = 50  # results a search asks for at a time
CONTEXT_AROUND = 10  # messages shown on either side of a search result (ids, roughly)
# Pages loaded by themselves on return, to reach where "new since you left"
# begins: beyond that, the divider marks the top of what is loaded.
WALK_PAGES = 3
PAGES = "history-pages"
SEARCH = "search"


class RoomHistory:
    """The history of the room shown in ``view``. ``client()`` is the current
    connection, ``focused()`` whether the window has the focus, and
    ``add_unread(n)`` counts messages not yet read in the title."""

    def __init__(
        self,
        view: ChatView,
        last_seen: LastSeen,
        *,
        client: Callable[[], ChatClient | None],
        focused: Callable[[], bool],
        add_unread: Callable[[int], None],
    ) -> None:
        self.view = view
        self.last_seen = last_seen
        self._client = client
        self._focused = focused
        self._add_unread = add_unread
        self.key: str | None = None  # of the room shown
        self.since: int | None = None  # its last id seen, when we came back
        self.newest_public = 0  # the newest public id shown of the room
        self.replay_left = 0  # messages of the welcome's replay still to come
        self.features: tuple[str, ...] = ()  # the welcome's
        self.walking = False  # loading pages back to where the unread begins
        self._walked = 0
        # On this connection: ("page", before, 0) or ("context", before, the
        # result's id), oldest first; the search asked for (query, before).
        self._asked: deque[tuple[str, int | None, int]] = deque()
        self._search: tuple[str, int | None] | None = None

    @property
    def busy(self) -> bool:
        """The room's history is still coming in on a return: nothing is read yet."""
        return bool(self.replay_left) or self.walking

    # -- what the app routes here --------------------------------------------------

    def entered(self, event: Welcomed, host: str, port: int) -> bool:
        """After a welcome; returns whether it is another room than the one shown."""
        welcome = event.welcome
        self.features = welcome.features or ()
        self._asked.clear()  # answers meant for another connection never come
        self._search = None
        key = server_key(host, port, event.pin)
        new = key != self.key
        if new:
            self.last_seen.save()
            self.key = key
            self.since = self.last_seen.get(key)
            self.newest_public = 0
            self._walked = 0
            self.view.start_room(self.since)
        self.replay_left = welcome.history_count
        self.view.set_paging(False)  # until the replay is in: pages go above it
        if not self.replay_left:
            self._replay_finished()
        return new

    def message_in(self, message: ChatMessage, *, shown: bool) -> None:
        """A chat message arrived (``shown``: it was new, not a replay repeated)."""
        replayed = message.history and self.replay_left > 0
        self.replay_left -= replayed
        public = message.to is None
        if shown and public:
            self.newest_public = max(self.newest_public, message.id)
            mine = message.sender == self.view.own_name
            since = self.since
            if message.history:
                if since is not None and not mine and message.id > since:
                    self._add_unread(1)  # new since the person left
            elif mine or (self._focused() and self.view.at_end):
                self.mark_read()
        if replayed and not self.replay_left:
            self._replay_finished()

    def mark_read(self) -> None:
        """The person has read the room up to its newest message shown."""
        if self.key is not None and self.newest_public:
            self.last_seen.saw(self.key, self.newest_public)

    def save(self) -> None:
        self.last_seen.save()

    def connection_lost(self) -> None:
        """The connection ended: what was asked on it will not be answered."""
        self.last_seen.save()
        self._asked.clear()
        panel = self.view.search_panel
        if self._search is not None and panel is not None:
            panel.show_error("Not connected: the search was not answered.")
        self._search = None

    def page_loaded(self, event: HistoryLoaded) -> None:
        page = event.page
        request = self._request(page.before)
        if request is None:
            return  # asked for on a connection that has ended
        kind, _before, chosen = request
        if kind == "context":
            self._context_loaded(page.messages, chosen, event.refused)
            return
        if event.refused:
            self.view.page_failed()
            self.walking = False
            return
        unread = self.view.insert_page(page.messages, more=page.more)
        if unread:
            self._add_unread(unread)
        if self.walking:
            self._walk()

    def results_found(self, event: SearchFound) -> None:
        results, asked, panel = event.results, self._search, self.view.search_panel
        if asked is None or panel is None or results.query != asked[0]:
            return  # an earlier search's, or asked on a connection that has ended
        self._search = None
        query, before = asked
        below = before is None or all(m.id < before for m in results.messages)
        if event.refused or not below:
            panel.show_error("The server sent results this app cannot show.")
            return
        panel.show_results(query, results.messages, results.more, further=before is not None)

    def refused(self, error: Error) -> None:
        """An error in reply to ``history`` or ``search``: said where it was asked."""
        panel = self.view.search_panel
        if error.in_reply_to == SEARCH:
            self._search = None
            if panel is not None:
                panel.show_error(error.message or "The server could not search for that.")
            return
        if not self._asked:
            return
        kind, _before, _chosen = self._asked.popleft()  # answers come in order
        if kind == "context" and panel is not None:
            panel.show_error("The server could not show this result in its conversation.")
        elif kind == "page":
            self.view.page_failed()
            self.walking = False

    # -- what the view asks for ------------------------------------------------------

    def ask_page(self) -> bool:
        """The view reached its top: ask for the page before it (``False``: not now)."""
        client = self._client()
        if client is None or not client.joined or PAGES not in self.features:
            return False
        before = self.view.oldest_id
        if not client.history(before, PAGE_SIZE):
            return False
        self._asked.append(("page", before, 0))
        return True

    def open_search(self) -> None:
        """Ctrl+F: the search pane, its box focused."""
        panel = self.view.open_search()
        client = self._client()
        if client is not None and client.joined and SEARCH not in self.features:
            panel.show_error("This server cannot search its history.")

    def search(self, query: str, before: int | None) -> None:
        panel, client = self.view.search_panel, self._client()
        if panel is None:
            return
        if client is None or not client.joined:
            panel.show_error("Not connected: search once you are back in the room.")
        elif SEARCH not in self.features:
            panel.show_error("This server cannot search its history.")
        elif client.search(query, SEARCH_LIMIT, before):
            self._search = (query, before)

    def show_context(self, message: ChatMessage) -> None:
        """A result was chosen: ask for the messages around it."""
        panel, client = self.view.search_panel, self._client()
        if panel is None:
            return
        if PAGES not in self.features:
            panel.show_context([message], message.id)  # all there is to show
            return
        before = message.id + CONTEXT_AROUND + 1
        if client is None or not client.history(before, 2 * CONTEXT_AROUND + 1):
            panel.show_error("Not connected: the conversation cannot be shown now.")
            return
        self._asked.append(("context", before, message.id))

    # -- inside ---------------------------------------------------------------------

    def _replay_finished(self) -> None:
        self.view.replay_done()
        self.view.set_paging(PAGES in self.features)
        self.walking = True
        self._walk()

    def _walk(self) -> None:
        """Load pages back to where "new since you left" begins (at most
        ``WALK_PAGES``), then show it."""
        since, oldest = self.since, self.view.oldest_id
        behind = since is not None and (oldest is None or oldest > since + 1)
        if behind and self._walked < WALK_PAGES:
            self._walked += 1
            if self.view.ask_older():
                return
        self.walking = False
        self.view.scroll_to_divider()

    def _request(self, before: int | None) -> tuple[str, int | None, int] | None:
        """The oldest request that a page with this ``before`` answers (taken)."""
        for request in self._asked:
            if request[1] == before:
                self._asked.remove(request)
                return request
        return None

    def _context_loaded(
        self, messages: tuple[ChatMessage, ...], chosen: int, refused: bool
    ) -> None:
        panel = self.view.search_panel
        if panel is None:
            return
        if refused:
            panel.show_error("The server sent a conversation this app cannot show.")
            return
        panel.show_context(messages, chosen)
