"""Folders that hold our state, made safely on shared machines.

A state folder is one whose contents we later trust: the node cache, make_shards' decode records
(`OUT/.work`), the upload's staging folder, the collection mode's `OUT.parts` and `OUT.shards`, a
run folder with its `last.pt`. In /tmp or a group scratch folder another user could create such a
folder first (its name is derivable from the URL or the output name) and fill it, or later swap
what is in it. So:

- a folder we create for private state is made with mode 0700 (others cannot even list it);
- an existing one is used only if it is a real directory (not a symlink), owned by this user, and
  writable by nobody else; the folder it lies in must be ours or root's and not writable by
  others, unless it has the sticky bit (as /tmp has: others cannot rename or delete our entries).
  Group write counts as others' only for a group other than this user's own (with the user-private
  groups of Debian and Ubuntu, umask 002 makes every folder group-writable by its owner alone);
- anything else is UnsafeFolder, one line saying what is wrong and what to do.
"""
from __future__ import annotations

import os
import stat


class UnsafeFolder(Exception):
    """A folder another user owns or can write to; str() is one line naming it."""


def _writable_by_others(st: os.stat_result) -> str | None:
    who = [w for w, bit in (("its group", stat.S_IWGRP), ("all users", stat.S_IWOTH))
           if st.st_mode & bit and not (bit == stat.S_IWGRP and st.st_gid == os.getegid())]
    return " and ".join(who) or None


def check_folder(path: str, what: str) -> None:
    """UnsafeFolder unless `path` (which exists) is a directory of ours that only we can write."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFolder(f"{path}: the {what} is a symbolic link; give the real folder (or remove the link)")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFolder(f"{path}: the {what} is not a folder")
    if st.st_uid != os.geteuid():
        raise UnsafeFolder(f"{path}: the {what} belongs to user id {st.st_uid}, not to you: refusing to trust what "
                           f"it holds (remove it, or choose another folder)")
    who = _writable_by_others(st)
    if who:
        raise UnsafeFolder(f"{path}: the {what} is writable by {who}: refusing to trust what it holds "
                           f"(chmod go-w it if that is intended to be private, or choose another folder)")
    parent = os.path.dirname(os.path.abspath(path))
    pst = os.stat(parent)
    if pst.st_uid not in (os.geteuid(), 0) or (_writable_by_others(pst) and not pst.st_mode & stat.S_ISVTX):
        raise UnsafeFolder(f"{path}: the {what} lies in {parent}, which other users can write to without the sticky "
                           f"bit (they could swap it): choose a folder of your own")


def state_folder(path: str, what: str, private: bool = True) -> str:
    """`path` created (0700 when `private`, else as the umask gives) or, if it exists, checked by
    check_folder. Parents are created as plain folders. Returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        os.mkdir(path, 0o700 if private else 0o755)
    except FileExistsError:
        pass
    check_folder(path, what)  # also a folder just made: the one it lies in may be others'
    return path
