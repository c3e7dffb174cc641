"""System prompts and music on hold: real prompt sets, one folder per language, loaded into the
media engine once and shared by every call.

The prompt list (``PROMPTS``) names each system prompt hpbx plays ("enter your PIN", digits,
"goodbye", beep ...) with the file of Debian's ``asterisk-core-sounds-en-wav`` it comes from and
its words in English and German. ``make build`` runs ``python -m hpbx.media.prompts build DIR``:

* ``DIR/en/<name>.wav``: the Debian recording, converted to 8 kHz 16-bit mono;
* ``DIR/de/<name>.wav``: the German words spoken by ``espeak-ng`` (voice "de"), converted the
  same way (tones such as the beep are copied from the English set).

At call time ``PromptLibrary.system(language, name)`` gives the engine name of a prompt in the
tenant's language, looked up file by file: the operator's drop-in folder
(``[media] custom_prompts``/<lang>/<name>.wav), then the built set, then the same in English,
then (a first start without ``make build``) the Debian file itself. A prompt found nowhere is
"" and the channel skips it (logged). Music classes: "default" is ``[media] moh`` (Debian's
``asterisk-moh-opsound-wav``), any folder ``<custom_prompts>/moh/<class>/`` is a class of that
name; ``music(cls)`` loads a class's files (sorted by name) on first use.

Engine prompt names: ``sys/<lang>/<name>``, ``moh/<class>/<file>``, ``ann/<tenant>/<id>``.
A file is loaded again when its modification time changed (a re-recorded announcement, a
prompt the operator replaced), so nothing needs a restart.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hpbx.media import audio

log = logging.getLogger("hpbx.media.prompts")

DEBIAN_SOUNDS = "/usr/share/asterisk/sounds/en"

# name: (Debian file under sounds/en without .wav, English words, German words).
# German "" = not speech (copied from the English set).
PROMPTS: dict[str, tuple[str, str, str]] = {
    "beep": ("beep", "", ""),
    "silence": ("silence/1", "", ""),
    "goodbye": ("vm-goodbye", "Goodbye", "Auf Wiederhören."),
    "thank-you": ("auth-thankyou", "Thank you.", "Danke."),
    "im-sorry": ("im-sorry", "I'm sorry.", "Es tut mir leid."),
    "please-try-again": ("please-try-again", "Please try again.", "Bitte versuchen Sie es noch einmal."),
    "invalid": ("pbx-invalid", "I am sorry, that's not a valid extension. Please try again.",
                "Diese Eingabe ist leider ungültig. Bitte versuchen Sie es noch einmal."),
    "not-permitted": ("feature-not-avail-line", "That feature is not available on this line.",
                      "Diese Funktion ist für Ihren Anschluss nicht freigegeben."),
    "not-in-service": ("ss-noservice", "The number you have dialed is not in service. "
                       "Please check the number and try again.",
                       "Die gewählte Nummer ist nicht vergeben. Bitte prüfen Sie die Nummer."),
    "one-moment": ("one-moment-please", "One moment, please.", "Einen Moment, bitte."),
    "enter-pin": ("agent-pass", "Please enter your password followed by the pound key.",
                  "Bitte geben Sie Ihre PIN ein, gefolgt von der Raute-Taste."),
    "pin-incorrect": ("auth-incorrect", "Password incorrect. Please enter your password "
                      "followed by the pound key.",
                      "Die PIN ist falsch. Bitte geben Sie Ihre PIN ein, gefolgt von der Raute-Taste."),
    "new-pin": ("vm-newpassword", "Please enter your new password followed by the pound key.",
                "Bitte geben Sie Ihre neue PIN ein, gefolgt von der Raute-Taste."),
    "reenter-pin": ("vm-reenterpassword", "Please re-enter your password followed by the pound key.",
                    "Bitte wiederholen Sie die neue PIN, gefolgt von der Raute-Taste."),
    "pin-changed": ("vm-passchanged", "Your passwords have been changed.", "Ihre PIN wurde geändert."),
    "pin-mismatch": ("vm-mismatch", "The passwords you entered and re-entered did not match. "
                     "Please try again.",
                     "Die beiden Eingaben stimmen nicht überein. Bitte versuchen Sie es noch einmal."),
    "leave-message": ("vm-intro", "Please leave your message after the tone. When done hang up "
                      "or press the pound key.",
                      "Bitte sprechen Sie nach dem Ton. Zum Beenden legen Sie auf oder drücken "
                      "Sie die Raute-Taste."),
    "record-after-tone": ("vm-rec-unv", "After the tone say your message and then press the pound key.",
                          "Bitte sprechen Sie Ihre Ansage nach dem Ton und drücken Sie dann die "
                          "Raute-Taste."),
    "message-saved": ("vm-msgsaved", "Your message has been saved.", "Ihre Aufnahme wurde gespeichert."),
    "saved": ("vm-saved", "saved", "gespeichert"),
    "nobody-available": ("vm-nobodyavail", "Nobody is available to take your call at the moment",
                         "Im Moment ist leider niemand erreichbar."),
    "you-have": ("vm-youhave", "you have", "Sie haben"),
    "new": ("vm-INBOX", "new", "neue"),
    "message": ("vm-message", "message", "Nachricht"),
    "messages": ("vm-messages", "messages", "Nachrichten"),
    "no": ("vm-no", "no", "keine"),
    "next-message": ("vm-next", "Press 6 to play the next message.",
                     "Drücken Sie die 6 für die nächste Nachricht."),
    "delete-message": ("vm-delete", "Press 7 to delete this message.",
                       "Drücken Sie die 7, um diese Nachricht zu löschen."),
    "deleted": ("vm-deleted", "Message deleted.", "Nachricht gelöscht."),
    "conf-only-person": ("conf-onlyperson", "You are currently the only person in this conference.",
                         "Sie sind im Moment allein in dieser Konferenz."),
    "conf-enter-pin": ("conf-getpin", "Please enter the conference pin number.",
                       "Bitte geben Sie die PIN der Konferenz ein."),
    "conf-invalid-pin": ("conf-invalidpin", "That pin is invalid for this conference.",
                         "Diese PIN ist für diese Konferenz ungültig."),
    "conf-locked": ("conf-locked", "This conference is locked!", "Diese Konferenz ist gesperrt."),
    "followme-options": ("followme/options", "press 1 to accept this call, or 2 to reject it",
                         "Drücken Sie die 1, um den Anruf anzunehmen, oder die 2, um ihn abzulehnen."),
    "followme-hold": ("followme/pls-hold-while-try", "please hold while I try to locate the person "
                      "you are calling", "Bitte warten Sie, die gewünschte Person wird gesucht."),
    "followme-sorry": ("followme/sorry", "I'm sorry, but I was unable to locate the person you are "
                       "calling", "Die gewünschte Person ist leider nicht erreichbar."),
    # Debian's sound set has no "this call is recorded": espeak-ng speaks the English too
    "call-recorded": ("", "This call is being recorded.", "Dieses Gespräch wird aufgezeichnet."),
    "star": ("digits/star", "star", "Stern"),
    "pound": ("digits/pound", "pound", "Raute"),
}
_DE_DIGITS = ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun")
for _d, _word in enumerate(_DE_DIGITS):
    PROMPTS[f"digits/{_d}"] = (f"digits/{_d}", str(_d), _word)

# Voice2Mail and the user mailbox (hpbx.pbx.voicemail): the Asterisk names it plays
PROMPTS.update({
    "vm-theperson": ("vm-theperson", "The person at extension", "Der Teilnehmer mit der Nummer"),
    "vm-isonphone": ("vm-isonphone", "is on the phone.", "telefoniert gerade."),
    "vm-isunavail": ("vm-isunavail", "is unavailable.", "ist nicht erreichbar."),
    "vm-and": ("vm-and", "and", "und"),
    "vm-Old": ("vm-Old", "old", "alte"),
    "vm-nomore": ("vm-nomore", "No more messages.", "Keine weiteren Nachrichten."),
    "vm-received": ("vm-received", "received", "empfangen am"),
    "vm-from-phonenumber": ("vm-from-phonenumber", "from phone number", "von der Nummer"),
    "vm-incorrect": ("vm-incorrect", "Login incorrect.", "Die Anmeldung ist fehlgeschlagen."),
    "vm-nobox": ("vm-nobox", "You have no mailbox.", "Sie haben keine Mailbox."),
    # Asterisk's vm-login ("Comedian Mail") and vm-advopts name other keys: spoken instead
    "mailbox-number": ("", "Please enter the mailbox number followed by the pound key.",
                       "Bitte geben Sie die Nummer der Mailbox ein, gefolgt von der Raute-Taste."),
    "mailbox-options": ("", "Press 5 to repeat this message, 6 for the next one, 4 for the previous "
                        "one, 7 to delete it, 9 to save it, or pound to end.",
                        "Drücken Sie die 5, um die Nachricht zu wiederholen, die 6 für die nächste, "
                        "die 4 für die vorherige, die 7 zum Löschen, die 9 zum Speichern, oder die "
                        "Raute-Taste zum Beenden."),
})
_EN_NUMBERS = {10: "ten", 11: "eleven", 12: "twelve", 13: "thirteen", 14: "fourteen", 15: "fifteen",
               16: "sixteen", 17: "seventeen", 18: "eighteen", 19: "nineteen", 20: "twenty",
               30: "thirty", 40: "forty", 50: "fifty", 60: "sixty", 70: "seventy", 80: "eighty",
               90: "ninety"}
_DE_NUMBERS = {10: "zehn", 11: "elf", 12: "zwölf", 13: "dreizehn", 14: "vierzehn", 15: "fünfzehn",
               16: "sechzehn", 17: "siebzehn", 18: "achtzehn", 19: "neunzehn", 20: "zwanzig",
               30: "dreißig", 40: "vierzig", 50: "fünfzig", 60: "sechzig", 70: "siebzig",
               80: "achtzig", 90: "neunzig"}
for _n, _word in _EN_NUMBERS.items():
    PROMPTS[f"digits/{_n}"] = (f"digits/{_n}", _word, _DE_NUMBERS[_n])
# Asterisk's day-0 is Sunday
for _i, (_en, _de) in enumerate(zip(("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
                                     "Saturday"),
                                    ("Sonntag", "Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag",
                                     "Samstag"))):
    PROMPTS[f"digits/day-{_i}"] = (f"digits/day-{_i}", _en, _de)
for _i, (_en, _de) in enumerate(zip(
        ("January", "February", "March", "April", "May", "June", "July", "August", "September",
         "October", "November", "December"),
        ("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September",
         "Oktober", "November", "Dezember"))):
    PROMPTS[f"digits/mon-{_i}"] = (f"digits/mon-{_i}", _en, _de)

# what espeak-ng speaks for a language set built from the German words
ESPEAK_VOICES = {"de": "de"}


def digits(number: str) -> list[str]:
    """Prompt names that say ``number`` digit by digit ("12" -> digits/1, digits/2)."""
    return [f"digits/{c}" for c in number if c.isdigit()]


# ---------------------------------------------------------------------- build (make build)
def _write(path: Path, pcm: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(audio.wav_bytes(pcm))
    os.replace(tmp, path)


def espeak(text: str, voice: str) -> bytes:
    """``text`` spoken by espeak-ng, as 8 kHz s16 mono PCM."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "say.wav")  # -w writes a whole header (--stdout streams one)
        subprocess.run([exe, "-v", voice, "-s", "150", "-w", out, text], check=True,
                       capture_output=True, timeout=60)
        with open(out, "rb") as f:
            return audio.decode(f.read(), field=f"espeak-ng {text!r}").pcm


def build(out: str, debian: str = DEBIAN_SOUNDS, languages=("en", "de")) -> dict[str, int]:
    """Write the prompt sets; returns {language: prompts written}. Files already there are kept
    (a rebuild after ``make clean`` writes them all)."""
    root = Path(out)
    done: dict[str, int] = {}
    if "en" in languages:
        n = 0
        for name, (src, _en, _de) in PROMPTS.items():
            target = root / "en" / f"{name}.wav"
            if target.exists():
                continue
            if not src:  # no Debian recording of it: spoken by espeak-ng
                _write(target, espeak(_en, "en"))
                n += 1
                continue
            source = Path(debian) / f"{src}.wav"
            if not source.exists():
                log.warning("prompt %s: %s missing (asterisk-core-sounds-en-wav)", name, source)
                continue
            _write(target, audio.read_pcm8k(str(source)))
            n += 1
        done["en"] = n
    for lang in languages:
        if lang == "en":
            continue
        voice = ESPEAK_VOICES[lang]
        n = 0
        for name, (_src, _en, words) in PROMPTS.items():
            target = root / lang / f"{name}.wav"
            if target.exists():
                continue
            if words:
                pcm = espeak(words, voice)
            else:
                en = root / "en" / f"{name}.wav"
                if not en.exists():
                    continue
                pcm = audio.read_pcm8k(str(en))
            _write(target, pcm)
            n += 1
        done[lang] = n
    return done


# ---------------------------------------------------------------------- at call time
class PromptLibrary:
    """Loads prompt files into the media engine on first use and keeps them there."""

    def __init__(self, engine, *, prompts_dir: str, custom_dir: str, moh_dir: str,
                 debian: str = DEBIAN_SOUNDS, media_dir: str = ""):
        self.engine = engine
        self.prompts_dir = Path(prompts_dir)
        self.custom_dir = Path(custom_dir)
        self.moh_dir = Path(moh_dir)
        self.debian = Path(debian)
        self.media_dir = Path(media_dir) if media_dir else None
        self._loaded: dict[str, tuple[str, float]] = {}  # engine name -> (path, mtime)
        self._warned: set[str] = set()

    @classmethod
    def from_settings(cls, engine, settings) -> "PromptLibrary":
        m = settings.media
        return cls(engine, prompts_dir=m.prompts_dir(), custom_dir=m.custom_dir(settings.store.path),
                   moh_dir=m.moh, media_dir=m.media_dir(settings.store.path))

    def load_file(self, engine_name: str, path: Path) -> bool:
        """``path`` under ``engine_name`` (again when the file changed); False if unreadable."""
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return False
        have = self._loaded.get(engine_name)
        if have == (str(path), mtime) and self.engine.has_prompt(engine_name):
            return True
        try:
            pcm = audio.read_pcm8k(str(path))
            self.engine.add_prompt(engine_name, pcm)
        except Exception as exc:
            if str(path) not in self._warned:
                self._warned.add(str(path))
                log.warning("prompt file %s not usable: %s", path, exc)
            return False
        self._loaded[engine_name] = (str(path), mtime)
        return True

    def _candidates(self, language: str, name: str):
        langs = [language] if language == "en" else [language, "en"]
        for lang in langs:
            yield lang, self.custom_dir / lang / f"{name}.wav"
            yield lang, self.prompts_dir / lang / f"{name}.wav"
        src = PROMPTS.get(name)
        if src is not None and src[0]:
            yield "en", self.debian / f"{src[0]}.wav"  # first start without make build

    def system(self, language: str, name: str) -> str:
        """Engine name of system prompt ``name`` in ``language`` (see the module doc), or ""."""
        language = language or "en"
        for lang, path in self._candidates(language, name):
            if path.exists() and self.load_file(f"sys/{lang}/{name}", path):
                if lang != language and (language, name) not in self._warned:
                    self._warned.add((language, name))
                    log.info("prompt %s: no %s version, playing %s", name, language, lang)
                return f"sys/{lang}/{name}"
        if (name, "missing") not in self._warned:
            self._warned.add((name, "missing"))
            log.warning("system prompt %s not found (language %s)", name, language)
        return ""

    def say(self, language: str, names) -> list[str]:
        """Engine names of several system prompts (missing ones left out)."""
        return [n for n in (self.system(language, x) for x in names) if n]

    def music_classes(self) -> list[str]:
        classes = ["default"] if self.moh_dir.is_dir() else []
        custom = self.custom_dir / "moh"
        if custom.is_dir():
            classes += sorted(p.name for p in custom.iterdir() if p.is_dir() and p.name != "default")
        return classes

    def music(self, cls: str = "default") -> list[str]:
        """Engine names of music class ``cls`` (falls back to "default"); [] if there is none."""
        folder = self.custom_dir / "moh" / cls
        if not folder.is_dir():
            folder = self.custom_dir / "moh" / "default"
            if not folder.is_dir():
                folder = self.moh_dir
            if cls != "default" and (cls, "moh") not in self._warned:
                self._warned.add((cls, "moh"))
                log.warning("music class %s not found: playing the default", cls)
            cls = "default"
        names = []
        for path in sorted(folder.glob("*.wav")):
            name = f"moh/{cls}/{path.stem}"
            if self.load_file(name, path):
                names.append(name)
        return names

    def announcement_path(self, file: str) -> Path | None:
        if not file or self.media_dir is None:
            return None
        return self.media_dir / file

    def announcement(self, tenant: str, ann) -> str:
        """Engine name of a tenant's announcement (its stored file), or "" when it has no audio."""
        path = self.announcement_path(ann.file)
        if path is None:
            log.warning("announcement %s/%s has no audio file", tenant, ann.id)
            return ""
        name = f"ann/{tenant}/{ann.id}"
        if self.load_file(name, path):
            return name
        # the call goes on without it (the caller of this method skips the step)
        log.warning("announcement %s/%s: audio file %s missing or unreadable: skipped", tenant, ann.id, path)
        return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpbx.media.prompts")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the en (Debian) and de (espeak-ng) prompt sets")
    b.add_argument("out")
    b.add_argument("--debian", default=DEBIAN_SOUNDS)
    b.add_argument("--lang", action="append", help="only these languages (default en, de)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(args.debian).is_dir():
        print(f"prompts: {args.debian} missing (asterisk-core-sounds-en-wav): not built", file=sys.stderr)
        return 0
    langs = tuple(args.lang or ("en", "de"))
    if "de" in langs and shutil.which("espeak-ng") is None:
        print("prompts: espeak-ng missing: the German set is not built", file=sys.stderr)
        langs = tuple(lang for lang in langs if lang == "en")
    done = build(args.out, args.debian, langs)
    print("prompts: " + ", ".join(f"{lang} {n} written" for lang, n in done.items()) + f" in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
