#!/bin/sh
# The en_US.UTF-8 locale that onnxruntime's StringNormalizer needs (scikit-learn text pipelines
# converted by skl2onnx): compiled into DEST unless the system already has it. Prints the folder
# to put in LOCPATH, or nothing when the system's own locales will do. Missing tools are not an
# error: one line says what to install, and only such text models fail to load.
#   usage: deploy/locales.sh DEST        (make serve: DEST=.venv-serve/locale)
set -eu
DEST=${1:?usage: deploy/locales.sh DEST}
NAME=en_US.utf8

if locale -a 2>/dev/null | grep -qix 'en_US\.utf-\{0,1\}8'; then
    exit 0
fi
if [ -d "$DEST/$NAME" ]; then
    echo "$DEST"; exit 0
fi
if ! command -v localedef >/dev/null 2>&1 || [ ! -e /usr/share/i18n/locales/en_US ]; then
    echo "locales: no en_US.UTF-8 locale and no way to compile one: install Debian's locales package" \
         "(apt-get install locales) for text models (StringNormalizer) to load" >&2
    exit 0
fi
mkdir -p "$DEST"
rm -rf "$DEST/$NAME.part"
# -c: write the locale despite localedef's warnings about the sources (it exits 1 for those).
localedef -i en_US -c -f UTF-8 "$DEST/$NAME.part" || [ -f "$DEST/$NAME.part/LC_CTYPE" ]
mv "$DEST/$NAME.part" "$DEST/$NAME"
echo "$DEST"
