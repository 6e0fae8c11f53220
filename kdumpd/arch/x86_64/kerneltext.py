"""x86_64: where the kernel text sits and the direct-map base, from what the running
kernel shows (its ``/proc/kcore`` program headers, ``/proc/kallsyms``), as kexec-tools'
x86_64 ``get_kernel_vaddr_and_size()`` finds them.  Pure: the system layer reads the
files (:mod:`kdumpd.system.kernelfacts`) and hands the numbers here.

1. ``source="kcore"``: the kcore PT_LOAD that contains ``_stext``; ``vaddr`` = its start
   aligned down to 1 MiB, ``size`` = (its end - ``vaddr``) rounded up to 4 KiB.  Without
   ``_stext``: the first PT_LOAD inside the kernel image area (``source="kcore-range"``).
2. ``source="kallsyms"`` without kcore: the kcore text PT_LOAD is exactly
   ``[_text, _end)``, so kallsyms gives the same numbers.
3. ``source="kallsyms-estimate"``: kallsyms lacks ``_end`` (CONFIG_KALLSYMS_ALL=n); the
   end is the highest built-in symbol in the kernel image area, an under-estimate.

``page_offset`` is the lowest kcore PT_LOAD vaddr masked to 1 GiB (KASLR-aware), None
without kcore (the caller then uses :data:`X86_64_PAGE_OFFSET`).
"""

from __future__ import annotations

from kdumpd.arch.x86_64 import KERNEL_TEXT_AREA, START_KERNEL_MAP
from kdumpd.core.ranges import round_up
from kdumpd.core.segment import PAGE_SIZE
from kdumpd.core.topology import KernelText

KERNEL_VADDR_ALIGN = 1 << 20
_GIB_MASK = ~((1 << 30) - 1) & ((1 << 64) - 1)


def _text_from_segment(vaddr: int, memsz: int, source: str) -> KernelText:
    start = vaddr & ~(KERNEL_VADDR_ALIGN - 1)
    return KernelText(start, round_up(vaddr + memsz - start, PAGE_SIZE), source)


def kernel_text(
    kcore_loads: list[tuple[int, int]] | None,
    syms: dict[str, int],
    highest: int | None,
) -> tuple[KernelText | None, int | None]:
    """Kernel text placement and PAGE_OFFSET (None when not derivable).

    ``kcore_loads``: ``(vaddr, memsz)`` of every kcore PT_LOAD (None: no kcore);
    ``syms``: ``_stext``/``_text``/``_end`` from kallsyms; ``highest``: the highest
    built-in symbol in the kernel image area."""
    stext = syms.get("_stext") or syms.get("_text")
    if kcore_loads:
        page_offset = min(v for v, _ in kcore_loads) & _GIB_MASK
        if stext:
            for vaddr, memsz in kcore_loads:
                if vaddr <= stext < vaddr + memsz:
                    return _text_from_segment(vaddr, memsz, "kcore"), page_offset
        top = START_KERNEL_MAP + KERNEL_TEXT_AREA
        for vaddr, memsz in kcore_loads:
            if vaddr >= START_KERNEL_MAP and vaddr + memsz <= top:
                return _text_from_segment(vaddr, memsz, "kcore-range"), page_offset
        return None, page_offset
    text = syms.get("_text") or stext
    if not text:
        return None, None
    if syms.get("_end"):
        return _text_from_segment(text, syms["_end"] - text, "kallsyms"), None
    if highest is not None and highest > text:
        return _text_from_segment(text, highest - text, "kallsyms-estimate"), None
    return None, None
