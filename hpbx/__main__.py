from hpbx.cli import main

raise SystemExit(main())
